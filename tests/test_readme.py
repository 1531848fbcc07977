"""README.md and docs/ stay true: docs/settings.md is what the settings class renders (a row per
setting, with its description), the README is a guide of at most 10 kB, nothing links outside the repository, and the
README's five-minute tour runs, as written, against a real gateway and the real CPU vLLM."""

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from service import settings_doc
from service.settings import Settings
from tests.harness import running_gateway

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SETTINGS_DOC = REPO / "docs" / "settings.md"
MAX_README_BYTES = 10_000
# A markdown link's target: [text](target).
LINK = re.compile(r"\]\(([^)\s]+)\)")
TOUR_TIMEOUT_S = 600


def section(text: str, heading: str) -> str:
    """The text under the `## ` heading that starts with `heading`, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def documented_settings(text: str) -> list[str]:
    """GRAFT_ names in the first cell of the rows of the settings table, lower-cased without the prefix."""
    names = []
    for line in text.splitlines():
        if line.startswith("|"):
            first_cell = line.split("|")[1]
            names += [name.lower() for name in re.findall(r"\bGRAFT_([A-Z0-9_]+)", first_cell)]
    return names


def tour_script(text: str) -> str:
    """Every ```bash block of the tour section, in order (the rule stated in the README's source)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", section(text, "Five-minute tour"), re.M | re.S)
    assert blocks, "the README's tour has no ```bash block"
    return "\n".join(blocks)


def test_every_setting_has_a_row_and_every_row_is_a_setting():
    assert SETTINGS_DOC.read_text() == settings_doc.render(), \
        "docs/settings.md is stale: python -m service.settings_doc > docs/settings.md"
    documented = documented_settings(SETTINGS_DOC.read_text())
    assert sorted(documented) == sorted(f.lower() for f in Settings.model_fields)
    assert all(field.description for field in Settings.model_fields.values())


def test_the_readme_is_a_guide_and_nothing_links_outside_the_repository():
    assert len(README.read_bytes()) <= MAX_README_BYTES
    for page in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            assert not re.match(r"^[a-z]+:", target), f"{page.name} links outside the repository: {target}"
            resolved = (page.parent / target.split("#")[0]).resolve()
            assert resolved.is_relative_to(REPO) and resolved.exists(), f"{page.name}: broken link {target}"


def test_the_rules_find_what_they_look_for():
    text = ("# x\n## Settings\n\n| variable | default | what |\n|---|---|---|\n"
            "| `GRAFT_DATA_DIR` | `data` | mentions GRAFT_NOT_A_NAME in its text |\n"
            "GRAFT_OUTSIDE_A_ROW\n## Five-minute tour\n```sh\nmake serve\n```\n"
            "```bash\necho one\n```\ntext\n```bash\necho two\n```\n## Next\n```bash\necho three\n```\n")
    assert documented_settings(text) == ["data_dir"]
    assert tour_script(text) == "echo one\n\necho two\n"


def _tour_folder(tmp_path: Path, base_model_dir: Path) -> Path:
    """A stand-in for the repository folder the tour is typed in: its .venv and prepared base model."""
    folder = tmp_path / "tour"
    (folder / "data" / "models").mkdir(parents=True)
    (folder / ".venv").symlink_to(Path(sys.prefix))
    (folder / "data" / "models" / "SmolLM2-135M-Instruct").symlink_to(base_model_dir)
    return folder


@pytest.mark.engine
async def test_the_tour_runs_as_written(local_engine, make_settings, base_model_dir, tmp_path):
    script = tour_script(README.read_text())
    assert "localhost:8000" in script, "the tour should address the gateway as localhost:8000"
    key = re.search(r"\bGRAFT_API_KEY=(\S+)", script)
    assert key, "the tour should export GRAFT_API_KEY"
    settings = make_settings(api_keys=[key.group(1)])
    script = script.replace("localhost:8000", f"127.0.0.1:{settings.port}")
    folder = _tour_folder(tmp_path, base_model_dir)
    (folder / "tour.sh").write_text("set -xeo pipefail\n" + script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1")

    async with running_gateway(settings, local_engine=local_engine):
        tour = await asyncio.create_subprocess_exec(
            "bash", "tour.sh", cwd=folder, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = await asyncio.wait_for(tour.communicate(), TOUR_TIMEOUT_S)
        except TimeoutError:
            os.killpg(tour.pid, signal.SIGKILL)
            output, _ = await tour.communicate()
            pytest.fail(f"the tour took over {TOUR_TIMEOUT_S} s:\n{output.decode(errors='replace')[-6000:]}")
    log = output.decode(errors="replace")
    assert tour.returncode == 0, f"the tour failed (exit {tour.returncode}):\n{log[-6000:]}"
    assert '"status":"failed"' not in log, f"an ingestion job of the tour failed:\n{log[-6000:]}"
    assert '"citations"' in log, f"the tour ran no completion:\n{log[-6000:]}"
