"""Syntax-check the apps' platform glue, which cannot be compiled here (no Android SDK, no Xcode).

    build/toolchains/syntax-venv/bin/python apps/syntax_check.py

Parses every Kotlin file of android-app/ and Swift file of ios-app/ with tree-sitter (tree-sitter-kotlin,
tree-sitter-swift) and fails on any ERROR or MISSING node; parses the Xcode project (OpenStep plist) with
openstep-parser and checks that every file it lists exists, that the shared scheme names a real target, that the
entitlements and asset catalogs parse and every app Swift file is in the project; parses the Android manifest and
resources (every @type/name resolves) and checks the Gradle wrapper jar and properties. This checks syntax and
references only: no types, no SDK symbols.
Ends with "syntax: N passed, M failed".
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parser_for(language: str):
    import tree_sitter

    module = __import__(f"tree_sitter_{language}")
    return tree_sitter.Parser(tree_sitter.Language(module.language()))


def syntax_errors(parser, path: Path) -> list[str]:
    tree = parser.parse(path.read_bytes())
    problems, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            kind = "missing" if node.is_missing else "error"
            problems.append(
                f"{path.relative_to(ROOT)}:{node.start_point[0] + 1}:{node.start_point[1] + 1}: {kind} {node.type}"
            )
        elif node.has_error:
            stack.extend(node.children)
    return problems


def xcode_project_errors(project: Path) -> list[str]:
    from openstep_parser import OpenStepDecoder

    with open(project / "project.pbxproj") as handle:
        data = OpenStepDecoder.ParseFromFile(handle)
    objects = data["objects"]
    problems = [f"{project.name}: unknown object {ref}" for ref in _refs(data["rootObject"]) if ref not in objects]
    groups = {k: v for k, v in objects.items() if v["isa"] == "PBXGroup"}
    parent = {child: key for key, group in groups.items() for child in group.get("children", [])}
    for key, obj in objects.items():
        for field in ("fileRef", "productRef", "buildConfigurationList", "mainGroup"):
            if field in obj and obj[field] not in objects:
                problems.append(f"{project.name}: {key}.{field} points to a missing object")
        if obj["isa"] == "PBXFileReference" and obj.get("sourceTree") == "<group>":
            parts, node = [obj["path"]], parent.get(key)
            while node is not None:
                if "path" in objects[node]:
                    parts.insert(0, objects[node]["path"])
                node = parent.get(node)
            if not (project.parent / Path(*parts)).exists():
                problems.append(f"{project.name}: {'/'.join(parts)} does not exist")
    return problems


def xcode_extras_errors(project: Path) -> list[str]:
    """Shared schemes name real targets; entitlements and asset catalogs parse; every app Swift file is compiled."""
    import plistlib
    import xml.etree.ElementTree as ET

    from openstep_parser import OpenStepDecoder

    with open(project / "project.pbxproj") as handle:
        objects = OpenStepDecoder.ParseFromFile(handle)["objects"]
    targets = {k: v["name"] for k, v in objects.items() if v["isa"] == "PBXNativeTarget"}
    problems = []
    schemes = sorted((project / "xcshareddata" / "xcschemes").glob("*.xcscheme"))
    if not schemes:
        problems.append(f"{project.name}: no shared scheme")
    for scheme in schemes:
        for ref in ET.parse(scheme).iter("BuildableReference"):
            if targets.get(ref.get("BlueprintIdentifier")) != ref.get("BlueprintName"):
                problems.append(f"{scheme.name}: {ref.get('BlueprintName')} is not a target of the project")
    app = project.parent / "OmniCoderChat"
    for obj in objects.values():
        settings = obj.get("buildSettings", {})
        if "CODE_SIGN_ENTITLEMENTS" in settings:
            plistlib.loads((project.parent / settings["CODE_SIGN_ENTITLEMENTS"]).read_bytes())
    for contents in app.rglob("Contents.json"):
        for image in json.loads(contents.read_text()).get("images", []):
            if "filename" in image and not (contents.parent / image["filename"]).is_file():
                problems.append(f"{contents}: {image['filename']} is missing")
    compiled = {v.get("path") for v in objects.values() if v["isa"] == "PBXFileReference"}
    for swift in sorted(app.glob("*.swift")):
        if swift.name not in compiled:
            problems.append(f"{project.name}: {swift.name} is not in the project")
    return problems


def android_resource_errors(app: Path) -> list[str]:
    """Every XML parses, and every @type/name the manifest and resources use exists under res/ (or android:)."""
    import xml.etree.ElementTree as ET

    res = app / "src" / "main" / "res"
    names: set[str] = set()
    for path in res.rglob("*.xml"):
        kind = path.parent.name.split("-")[0]
        if kind == "values":
            for item in ET.parse(path).getroot():
                names.add(f"{item.tag}/{item.get('name')}")
        else:
            names.add(f"{kind}/{path.stem}")
    problems = []
    for path in [app / "src" / "main" / "AndroidManifest.xml", *res.rglob("*.xml")]:
        for ref in re.findall(r'"@(?!android:)(\w+)/(\w+)"', path.read_text()):
            if "/".join(ref) not in names:
                problems.append(f"{path.relative_to(app)}: @{'/'.join(ref)} is not a resource")
    wrapper = app.parent / "gradle" / "wrapper"
    with zipfile.ZipFile(wrapper / "gradle-wrapper.jar") as jar:
        if b"org.gradle.wrapper.GradleWrapperMain" not in jar.read("META-INF/MANIFEST.MF"):
            problems.append("gradle-wrapper.jar has no GradleWrapperMain")
    if "distributionUrl=" not in (wrapper / "gradle-wrapper.properties").read_text():
        problems.append("gradle-wrapper.properties has no distributionUrl")
    return problems


def _refs(value) -> list[str]:
    return [value] if isinstance(value, str) else []


def main() -> int:
    checks: list[tuple[str, list[str]]] = []
    kotlin, swift = parser_for("kotlin"), parser_for("swift")
    for path in sorted((ROOT / "android-app").rglob("*.kt")) + sorted((ROOT / "android-app").rglob("*.kts")):
        checks.append((str(path.relative_to(ROOT)), syntax_errors(kotlin, path)))
    for path in sorted((ROOT / "ios-app").rglob("*.swift")):
        if ".build" not in path.parts:
            checks.append((str(path.relative_to(ROOT)), syntax_errors(swift, path)))
    project = ROOT / "ios-app" / "OmniCoderChat.xcodeproj"
    checks.append((str(project.relative_to(ROOT)), xcode_project_errors(project)))
    checks.append((f"{project.relative_to(ROOT)} (schemes, entitlements, assets)", xcode_extras_errors(project)))
    app = ROOT / "android-app" / "app"
    checks.append((f"{app.relative_to(ROOT)} (resources, Gradle wrapper)", android_resource_errors(app)))
    failed = [(name, problems) for name, problems in checks if problems]
    for name, problems in failed:
        print(f"FAILED {name}")
        for problem in problems[:10]:
            print(f"  {problem}")
    print(f"syntax: {len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
