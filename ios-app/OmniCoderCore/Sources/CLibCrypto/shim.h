// OpenSSL's digest API for SHA256Hasher on Linux (Debian: libssl-dev); Apple platforms use CryptoKit instead.
#include <openssl/evp.h>
