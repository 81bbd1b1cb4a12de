"""The strings of the Hugging Face tokenizer vectors (gen_hf_tokenizer.py): hand-picked edge cases, seeded random
mixtures of fragments and seeded random code points. Deterministic (random.Random with fixed seeds).

Every character is one Unicode 3.2 already assigned, with the same general category today: the regex engines the
apps use (Java's, ICU's) and Oniguruma (the `tokenizers` library's) may know different Unicode versions, and a
character one of them does not know would be classified differently (\\p{L}, \\s, NFC).
"""

from __future__ import annotations

import random
import unicodedata

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

EDGE_CASES = [
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n\n",
    "\r\n",
    "a\r\nb\r\n",
    " \n \n ",
    "   leading spaces",
    "trailing spaces   ",
    "x  \n  y",
    "tabs\tand\t\ttabs",
    "mixed \t \n\t\n  whitespace",
    " " * 100,
    "word" + " " * 37 + "word",
    "\n" * 20 + "end",
    "\u000b\u000c\u0085\u00a0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000",
    "a\u00a0b\u3000c\u2028d",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "I'm you'll they'd it's we've I've he's",
    "I'M YOU'LL THEY'D IT'S WE'VE DON'T",
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "it\u017fs 'ſ '\u017f Kelvin '\u212a",
    "don't'st''s'''",
    "rock 'n' roll",
    "0",
    "42",
    "1234567890",
    "3.14159 2.71828 -1e-9 +6.02e23",
    "1,000,000 and 10_000 and 0x7fff_ffff",
    "\u0663\u0664\u0665 \u0967\u0968 \uff11\uff12\uff13",
    "\u2460\u2461\u2462 \u00bd \u00b2 \u2163 \u216b",
    "version 3.11.4 on port 8080",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5\uff0c\u6807\u70b9\u7b26\u53f7\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u1112\u1161\u11ab\u1100\u1173\u11af",
    "caf\u00e9 cafe\u0301 CAFE\u0301",
    "\u212b \u00c5 A\u030a \u2126 \u03a9",
    "e\u0301\u0302\u0303 o\u0308\u0304",
    "\u0915\u094d\u0937 \u0928\u092e\u0938\u094d\u0924\u0947",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd",
    "RTL \u202eoverride\u202c and \u200fmark",
    "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439, \u043c\u0438\u0440!",
    "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3",
    "emoji \U0001f600\U0001f680\U0001f44d",
    "\U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1eb\U0001f1f7",
    "\u2764\ufe0f \u263a\ufe0e",
    "\U0001d400\U0001d401 \U00010330\U00010331",
    "\x00\x01\x1b[31mred\x1b[0m\x7f",
    "<|endoftext|>",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|endoftext|>",
    "text<|endoftext|>text",
    " <|endoftext|> ",
    "  <|im_end|>  \n",
    "<|im_start|<|im_end|",
    "<|im_start|>system\nYou are helpful.<|im_end|>",
    "<|endoftext|<|endoftext|>|>",
    "<|begin_of_text|>hello",
    "<think>reasoning</think>answer",
    " <think> x </think> ",
    "before <mask> after",
    "a   <mask>b",
    "<sep>   next",
    "x<sep>\n\ny",
    "TODO fix TODO: TODOs xTODO TODO",
    "caf\u00e9 and cafe\u0301",
    "def main():\n    return 42\n",
    "class Foo(Bar):\n    def __init__(self, x: int) -> None:\n        self.x = x  # comment\n",
    'if x == 1:\n\tprint("tab")\n\telse:\n\t\tpass\n',
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    'fun main(args: Array<String>) { println("hi") }',
    "let x: [Int: String] = [:]  // Swift",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 2; }",
    "x=>y; a->b; c::d; e...f; g!=h; i<=j; k>=l; m**n; o//p",
    "https://example.com/path?query=1&b=2#frag",
    "user@example.com; C:\\Users\\me\\file.txt",
    "!!!???...,,,;;;:::",
    "____init____ --flag ==sep== ~~tilde~~",
    "$$ \\frac{a}{b} $$ and `code` and ```block```",
    "    indented\n        more\n    back\n",
    "line one\nline two\n\nline four\n",
    "ALLCAPS lowercase MixedCase camelCase snake_case kebab-case",
    "a" * 300,
    "ab" * 150,
    "Hello world! " * 40,
]

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "def",
    "return",
    "import",
    "class",
    "self",
    "None",
    "True",
    "tokenizer",
    "encode",
    "decode",
    "bundle",
    "model",
    "layer",
    "attention",
    "kv_cache",
    "x",
    "caf\u00e9",
    "na\u00efve",
    "\u00fcber",
    "stra\u00dfe",
    "\u00e9t\u00e9",
    "\u0393\u03b5\u03b9\u03ac",
    "\u043f\u0440\u0438\u0432\u0435\u0442",
    "\u65e5\u672c",
    "\u8a9e",
    "\u6f22\u5b57",
    "\u3072\u3089\u304c\u306a",
    "\u30ab\u30bf\u30ab\u30ca",
    "\ud55c\uae00",
    "\u0645\u0631\u062d\u0628\u0627",
    "\u05e9\u05dc\u05d5\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947",
    "\u0e44\u0e17\u0e22",
    "\U0001f600",
    "\U0001f680",
    "\U0001f44d\U0001f3fd",
    "\u2764\ufe0f",
    "I'm",
    "don't",
    "we'll",
    "it's",
    "'S",
    "2024",
    "3.14",
    "0x1F",
    "1e-5",
    "42",
    "\u0663",
    "\uff15",
    "\u00bd",
    "e\u0301",
    "A\u030a",
]
PUNCT = [
    ".",
    ",",
    "!",
    "?",
    ":",
    ";",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "<",
    ">",
    "'",
    '"',
    "`",
    "-",
    "_",
    "=",
    "+",
    "*",
    "/",
    "\\",
    "|",
    "#",
    "@",
    "$",
    "%",
    "^",
    "&",
    "~",
    "->",
    "::",
    "...",
    "\u2014",
    "\u00ab",
    "\u00bb",
    "\u3002",
    "\uff0c",
]
SPACES = [" ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n    ", "\u3000", "\u00a0", "        "]
EXTRA_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<mask>", "<sep>", "TODO"]


# emoji of Unicode 6.0 to 8.0 (faces, transport, thumbs, family members, flags' letters, skin tones): old enough
EMOJI = [(0x1F1E6, 0x1F1FF), (0x1F3FB, 0x1F3FF), (0x1F440, 0x1F4FC), (0x1F600, 0x1F640), (0x1F680, 0x1F6C5)]


def _old_enough(c: str) -> bool:
    """Assigned in Unicode 3.2 (or an emoji of EMOJI) and in the same general category today (module docstring)."""
    old = unicodedata.ucd_3_2_0.category(c)
    if any(lo <= ord(c) <= hi for lo, hi in EMOJI):
        old = unicodedata.category(c)
    if c == "\u200b":  # zero width space: Cf since Unicode 4.0.1 (Zs before)
        old = "Cf"
    return old not in ("Cn", "Cs") and old == unicodedata.category(c)


def _check(text: str) -> str:
    bad = [f"U+{ord(c):04X}" for c in text if not _old_enough(c)]
    if bad:
        raise ValueError(f"text {text[:30]!r} has characters not stable since Unicode 3.2: {bad[:5]}")
    return text


RANGES = [
    (0x20, 0x7E),
    (0x00, 0x1F),
    (0xA0, 0x24F),
    (0x300, 0x36F),
    (0x370, 0x3FF),
    (0x400, 0x4FF),
    (0x590, 0x5FF),
    (0x600, 0x6FF),
    (0x900, 0x97F),
    (0xE00, 0xE7F),
    (0x1100, 0x11FF),
    (0x2000, 0x206F),
    (0x2100, 0x22FF),
    (0x3000, 0x30FF),
    (0x4E00, 0x9FA5),
    (0xAC00, 0xD7A3),
    (0xF900, 0xFAFF),
    (0xFE00, 0xFFEF),
    (0x10300, 0x1034F),
    (0x1D400, 0x1D7FF),
    (0x20000, 0x2A6D6),
    (0xE000, 0xE0FF),
]


def random_codepoints(rng: random.Random, count: int) -> str:
    out = []
    while len(out) < count:
        lo, hi = rng.choice(RANGES)
        c = chr(rng.randint(lo, hi))
        if _old_enough(c):
            out.append(c)
    return "".join(out)


def random_mixture(rng: random.Random, pieces: int, with_tokens: bool) -> str:
    out = []
    for _ in range(pieces):
        r = rng.random()
        if r < 0.45:
            out.append(rng.choice(WORDS))
        elif r < 0.65:
            out.append(rng.choice(PUNCT))
        elif r < 0.9:
            out.append(rng.choice(SPACES))
        elif r < 0.95 or not with_tokens:
            out.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
        else:
            out.append(rng.choice(EXTRA_TOKENS))
    return "".join(out)


def all_texts(mixtures: int = 900, randoms: int = 250) -> list[str]:
    """The edge cases, then `mixtures` fragment mixtures, then `randoms` random code point strings."""
    rng = random.Random(20240523)
    texts = list(EDGE_CASES)
    texts.append(" ".join(random_mixture(rng, 60, True) for _ in range(12)))  # one long text
    for i in range(mixtures):
        texts.append(random_mixture(rng, rng.randint(1, 24), with_tokens=i % 3 == 0))
    for _ in range(randoms):
        texts.append(random_codepoints(rng, rng.randint(1, 16)))
    return [_check(t) for t in texts]
