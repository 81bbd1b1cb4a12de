"""`omnicoder-package-app-assets --bundle DIR [--bundle DIR ...]`: copy verified bundles into the sample apps.

An ONNX bundle goes to the Android app (android-app/app/src/main/assets/bundle/), a Core ML bundle to the iOS app
(ios-app/OmniCoderChat/Resources/bundle/). Each bundle is verified (schema, paths, sizes, sha256) before it is
copied, the copy is verified again, and it replaces the app's old bundle atomically. Torch-free. See docs/apps.md.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from omnicoder.runtimes.bundle import MANIFEST, Bundle, open_bundle, safe_member

from omnicoder.cliutil import ArgumentParser
from omnicoder.errors import OmniCoderError, cli_main
from omnicoder.fsutil import atomic_directory

# target -> (app, the app's project marker, where its bundle goes), relative to the apps root
APPS = {
    "onnx": ("android", "android-app/app/build.gradle.kts", "android-app/app/src/main/assets/bundle"),
    "coreml": ("ios", "ios-app/OmniCoderChat.xcodeproj", "ios-app/OmniCoderChat/Resources/bundle"),
}
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def find_apps_root(given: str | Path | None = None) -> Path:
    """--apps-root, else the current directory or this source checkout when it holds android-app/ or ios-app/."""
    candidates = [Path(given)] if given else [Path.cwd(), SOURCE_ROOT]
    for root in candidates:
        if (root / "android-app").is_dir() or (root / "ios-app").is_dir():
            return root
    where = given or f"{Path.cwd()} or {SOURCE_ROOT}"
    raise OmniCoderError(f"no android-app/ or ios-app/ under {where}; pass --apps-root REPO (the omnicoder checkout)")


def app_for(bundle: Bundle, wanted: str = "auto") -> tuple[str, str, str]:
    """(app, project marker, destination) for a bundle; refuses a bundle of the wrong target for `wanted`."""
    from omnicoder.runtimes.bundle_checks import check_target

    check_target(bundle.manifest)  # an onnx graph under target coreml would reach the iOS app
    target = bundle.manifest["target"]
    if target not in APPS:
        raise OmniCoderError(
            f"{bundle.path} is a {target} bundle; the Android app takes onnx bundles and the iOS app coreml bundles"
        )
    app, marker, dest = APPS[target]
    if wanted not in ("auto", app):
        need = next(t for t, (a, _, _) in APPS.items() if a == wanted)
        raise OmniCoderError(
            f"--app {wanted} needs a {need} bundle, but {bundle.path} is a {target} bundle; "
            f"export one with omnicoder-export --target {need}"
        )
    if bundle.shared_kv:  # the apps feed past KV and read present = past + new rows
        raise OmniCoderError(
            f"{bundle.path} was exported with --kv-io shared (for onnxruntime-genai and omnicoder-generate); "
            f"the {app} app needs past/present KV: re-export without --kv-io"
        )
    return app, marker, dest


def package(bundle_dir: str | Path, apps_root: str | Path, wanted: str = "auto") -> tuple[str, Path, int]:
    """Verify `bundle_dir`, copy it into its app atomically, verify the copy; returns (app, destination, bytes)."""
    bundle = open_bundle(bundle_dir)
    app, marker, rel = app_for(bundle, wanted)
    root = Path(apps_root)
    if not (root / marker).exists():
        raise OmniCoderError(f"the {app} app project is missing ({root / marker}); pass --apps-root REPO")
    names = [MANIFEST, *bundle.manifest["files"]]
    total = 0
    with atomic_directory(root / rel) as tmp:
        for name in names:
            source = bundle.path / MANIFEST if name == MANIFEST else safe_member(bundle.path, name)
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            total += target.stat().st_size
        open_bundle(tmp)  # the copy must verify too
    return app, root / rel, total


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="omnicoder-package-app-assets", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--bundle",
        action="append",
        required=True,
        metavar="DIR",
        help="bundle directory (onnx -> Android app, coreml -> iOS app); repeat for both apps",
    )
    p.add_argument("--app", choices=["auto", "android", "ios"], default="auto", help="refuse bundles for the other app")
    p.add_argument("--apps-root", help="the checkout holding android-app/ and ios-app/ (default: found)")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = find_apps_root(args.apps_root)
    bundles = [open_bundle(path) for path in args.bundle]  # verify all before copying any
    apps = [app_for(b, args.app)[0] for b in bundles]
    for app in set(apps):
        if apps.count(app) > 1:
            raise OmniCoderError(f"more than one bundle for the {app} app; give one onnx and/or one coreml bundle")
    for path in args.bundle:
        app, dest, total = package(path, root, args.app)
        print(f"{app}: copied {path} ({total / 2**20:.1f} MB) into {dest}")
    for target, (app, _, _) in APPS.items():  # android, then ios
        if args.app == "auto" and app not in apps:
            print(f"{app}: no {target} bundle given, its app was left as it was", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
