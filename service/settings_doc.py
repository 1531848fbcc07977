"""docs/settings.md, generated from the settings class: `python -m service.settings_doc > docs/settings.md`.

A test fails when the file is not what this renders, so a setting added, removed or redescribed
in service/settings.py shows up in the docs in the same change."""

from pathlib import Path

from pydantic_core import PydanticUndefined

from service.settings import Settings

MIB = 1024 * 1024
HEADER = """# Settings

graft reads one settings class (`service/settings.py`) from the environment, each field as
`GRAFT_` and its name in capitals; lists are comma-separated. This page is generated from that
class (`python -m service.settings_doc > docs/settings.md`); a test keeps it current.

| variable | default | what it does |
|---|---|---|
"""


def default_of(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is None or value is PydanticUndefined:
        return "none"
    if value == []:
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= MIB and value % MIB == 0:
        return f"{value // MIB} MiB"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    return f"`{value}`"


def render() -> str:
    rows = [f"| `GRAFT_{name.upper()}` | {default_of(field)} | {field.description} |"
            for name, field in Settings.model_fields.items()]
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
