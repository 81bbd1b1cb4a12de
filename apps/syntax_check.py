"""Syntax-check the apps' platform glue, which cannot be compiled here (no Android SDK, no Xcode).

    build/toolchains/syntax-venv/bin/python apps/syntax_check.py

Parses every Kotlin file of android-app/ and Swift file of ios-app/ with tree-sitter (tree-sitter-kotlin,
tree-sitter-swift) and fails on any ERROR or MISSING node; parses the Xcode project (OpenStep plist) with
openstep-parser and checks that every file it lists exists. This checks syntax only: no types, no SDK symbols.
Ends with "syntax: N passed, M failed".
"""

from __future__ import annotations

import sys
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
    failed = [(name, problems) for name, problems in checks if problems]
    for name, problems in failed:
        print(f"FAILED {name}")
        for problem in problems[:10]:
            print(f"  {problem}")
    print(f"syntax: {len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
