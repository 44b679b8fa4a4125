"""``gpux build``: validate a folder's gpux.yml and its model, and store the bundle under a name."""

from __future__ import annotations

from pathlib import Path

import typer

from gpux.cli import common
from gpux.errors import ConfigError


def build(
    folder: Path = typer.Argument(..., help="A folder with a gpux.yml."),
    tag: str = typer.Option("latest", "--tag", "-t", help="Tag to store the build under (name:tag)."),
) -> None:
    """Check FOLDER/gpux.yml against its model and store it so `gpux run NAME` works."""
    from gpux.config import find_config, load_config, manifest_from_config
    from gpux.engine.model import load
    from gpux.store.bundle import Bundle
    from gpux.store.local import Store, parse_ref

    cfg_path = find_config(folder) if folder.is_dir() else None
    if cfg_path is None:
        raise ConfigError(f"{folder} has no gpux.yml", hint="create one; see docs/config.md")
    cfg = load_config(cfg_path)
    parse_ref(f"{cfg.name}:{tag}")
    manifest, files = manifest_from_config(cfg, cfg_path.parent)
    manifest.tag = tag
    src_root = files[manifest.graphs["model"]].parent
    # Load once from the source on CPU: proves the graph loads and the declarations fit it,
    # whatever provider the config asks for at run time.
    checked = load(Bundle(src_root, manifest), "cpu", log_level=common.ort_log_level())
    store = Store()
    with store.lock(manifest.name):
        bundle = store.publish(manifest, files)
    console = common.err_console()
    total = sum(f["size"] for f in bundle.manifest.files.values())
    lines = [f"built {bundle.name}:{tag} ({total / 1e6:.2f} MB, "
             f"{len(bundle.manifest.files)} file(s)) -> {bundle.root}"]
    lines += [f"  input  {s.name}: {s.describe()}" for s in checked.inputs]
    lines += [f"  output {s.name}: {s.describe()}" for s in checked.outputs]
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    typer.echo(f"{bundle.name}:{tag}")
