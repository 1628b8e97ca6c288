"""The source files each app reads, as the DVC pipeline's code dependencies: `python -m src.sources`.

`python -m src.sources --out DIR APP...` writes DIR/APP.json for each app (run, bound, robustness,
plot): the md5 of every file of src/ that the app imports, found statically (every import statement
of every module reached, those inside functions too; `importlib.import_module(f"{__package__}.
certify.{name}")`: every module of that subpackage; a name it cannot read is an error; for the Hydra
apps, the modules conf/'s `_target_`s name), and of every file of conf/ but the experiment overlays
(each stage names its own). src.run's followers (`then`, imported by an app's name) are not
followed: the pipeline's training stages run with `then=[]` and the followers as stages of their own.

A stage depends on its app's file instead of listing the sources by hand: no list to forget a module
in, and a dvc.lock a few entries per stage long (DVC rewrites the whole lock after every stage). The
file changes only when one of its app's sources does, so only the stages of that app re-run (the
registries import no bound or certificate: changing one does not retrain). Nothing here imports
torch: the stage that writes the files takes well under a second.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
CONF = ROOT / "conf"
APPS = ("run", "bound", "robustness", "plot")
HYDRA_APPS = ("run", "bound", "robustness")  # src.plot parses its arguments itself


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    """The package a module's relative imports and `__package__` refer to."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def imports_of(path: Path) -> set[str]:
    """Absolute names of the src modules `path` imports, anywhere in it (relative imports resolved; for
    `from X import name`, both X and X.name: a name may be a module)."""
    package = _package_of(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "src"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.split(".")[0] == "src":
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def imported_by_name(path: Path) -> set[str]:
    """What `path` imports through `importlib.import_module` or `__import__`: a constant name as it is; a
    computed one, `f"{__package__}.<subpackage>.{name}"` (or spelled out), as that subpackage, whose
    modules are then all sources; a computed top-level name names an app (src.run's followers), not a
    source. A call whose name this cannot read is an error, not a module left out."""
    package = _package_of(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        called = getattr(node, "func", None)
        if not (isinstance(node, ast.Call) and getattr(called, "attr", getattr(called, "id", None))
                in ("import_module", "__import__")):
            continue
        arg = node.args[0] if node.args else None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.add(arg.value)
            continue
        prefix = ""  # the constant start of an f-string name, with __package__ read as the package
        for part in arg.values if isinstance(arg, ast.JoinedStr) else []:
            if isinstance(part, ast.Constant):
                prefix += part.value
            elif isinstance(part, ast.FormattedValue) and getattr(part.value, "id", None) == "__package__":
                prefix += package
            else:
                break
        if prefix and prefix.split(".")[0] != "src":
            continue  # another package's module
        parent = prefix.rpartition(".")[0]
        if parent.split(".")[0] != "src" or not ROOT.joinpath(*parent.split(".")).is_dir():
            raise ValueError(f"{path.relative_to(ROOT)}:{node.lineno}: src.sources cannot tell which module "
                             f"this imports by name; give it a constant name or f\"{{__package__}}.<package>.{{name}}\"")
        if parent != "src":
            found.add(parent)
    return found


def _files_of(module: str) -> list[Path]:
    """The files that importing `module` runs (its packages' __init__.py too); [] for a name that is
    not a module (an imported class or function)."""
    parts = module.split(".")
    path = ROOT.joinpath(*parts)
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not file.is_file():
        return []
    return [ROOT.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts))] + [file]


def sources(app: str) -> list[Path]:
    """Every file of src/ that `python -m src.<app>` imports, and conf/ but its experiment overlays."""
    if app not in APPS:
        raise ValueError(f"no app {app!r}; allowed: {', '.join(APPS)}")
    seen: set[Path] = set()
    todo = [SRC / f"{app}.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imports_of(path):
            todo += [p for p in _files_of(module) if p not in seen]
        for module in imported_by_name(path):
            folder = ROOT.joinpath(*module.split("."))
            todo += sorted(folder.rglob("*.py")) if folder.is_dir() else _files_of(module)
        if path == SRC / f"{app}.py" and app in HYDRA_APPS:  # what Hydra instantiates from conf/
            todo += [p for module in targets() for p in _files_of(module)]
    configs = [p for p in CONF.rglob("*.yaml") if "experiment" not in p.relative_to(CONF).parts[:1]]
    return sorted(seen) + sorted(configs)


def targets() -> set[str]:
    """The src modules named by a `_target_` in conf/ (the module of `src.<module>.<object>`)."""
    found = set()
    for config in CONF.rglob("*.yaml"):
        for target in re.findall(r"_target_:\s*['\"]?(src(?:\.\w+)+)", config.read_text()):
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(len(parts), 1, -1) if _files_of(".".join(parts[:i]))}
    return found


def manifest(app: str) -> dict:
    """{"app": app, "files": {path relative to the project: md5}}."""
    return {"app": app, "files": {p.relative_to(ROOT).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
                                  for p in sources(app)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.sources", description=__doc__.split("\n\n")[0])
    parser.add_argument("apps", nargs="+", metavar="APP", help=f"one of {', '.join(APPS)}")
    parser.add_argument("--out", required=True, type=Path, help="the directory of the APP.json files")
    args = parser.parse_args(argv)
    wrong = [a for a in args.apps if a not in APPS]
    if wrong:
        sys.exit(f"error: no app {', '.join(map(repr, wrong))}; allowed: {', '.join(APPS)}")
    from .files import write_text  # atomic: a stage killed while writing leaves the old file or none

    for app in args.apps:
        write_text(args.out / f"{app}.json", json.dumps(manifest(app), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
