"""`graft domain report` against a real gateway over the fake engine scripted per route of
test_reports_api: it follows the job and prints the table, not-available rows included."""

from tests.harness import client, running_gateway
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_cli_client import graft
from tests.service.test_reports_api import ADMIN, lore, scripted


async def test_domain_report_follows_the_job_and_prints_the_table(make_settings, fake_engine, good_lora):
    fake_engine.script = scripted
    async with running_gateway(make_settings(engine_urls=[fake_engine.url], api_keys=[ADMIN])) as url:
        async with client(url, ADMIN) as http:
            await lore(http)
            assert (await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))).status_code == 201
        out = await graft(url, "domain", "report", "lore", "--evalset", "lore-qa", "--reader", "tone@1",
                          "--without", "memorize")
        lines = out.splitlines()
        row = next(line for line in lines if "closed book" in line)
        assert "0.000" in row, out
        assert any("-0.500 [-" in line for line in lines), out  # closed book against retrieval, below its value
        assert "tone@1 (request)" in next(line for line in lines if line.lstrip("│ ").startswith("reader")), out
        assert "tuned configuration: not available: the domain has no configuration version from a tuning" in out, out
        assert "memorize, closed book: not available: left out by the request" in out, out
        assert "report of lore: 7 routes" in out, out
        jobs = (await _jobs(url))["data"]
        assert [(j["kind"], j["status"]) for j in jobs] == [("report", "succeeded")]
        assert "--reader takes name@version" in await graft(url, "domain", "report", "lore", "--evalset", "lore-qa",
                                                            "--reader", "tone", ok=False)
        assert "404" in await graft(url, "domain", "report", "lore", "--evalset", "nope", ok=False)


async def _jobs(url: str) -> dict:
    async with client(url, ADMIN) as http:
        return (await http.get("/v1/jobs?kind=report")).json()
