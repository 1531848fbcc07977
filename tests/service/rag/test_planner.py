"""Where planning runs: on the event loop when the gateway is otherwise idle, else in a thread."""

import asyncio
import threading

import pytest
from transformers import AutoTokenizer

from indexer.registry import NotLoaded
from service.domains import DomainRoute, RoutingTable
from service.rag.planner import Planner
from service.rag.prompt import PromptBuilder
from service.rag.retrieval import Hit

BASE = "base-model"


class RecordingRetriever:
    """Answers one hit and records the thread each search ran on; `gate`, when set, holds
    searches until it is opened. Until `loaded`, a search must be allowed to load the corpus."""

    def __init__(self, gate: threading.Event | None = None, loaded: bool = True):
        self.threads: list[int] = []
        self.gate = gate
        self.loaded = loaded

    def search(self, names, query, k, mode, min_score=None, *, may_load=True):
        if not self.loaded:
            if not may_load:
                raise NotLoaded(names[0])
            self.loaded = True
        self.threads.append(threading.get_ident())
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        return [Hit(names[0], "doc-1", 1, 0.9, "The beacon is blue.", {})], 0.001


@pytest.fixture(scope="module")
def prompts(base_model_dir):
    return PromptBuilder(AutoTokenizer.from_pretrained(base_model_dir), max_model_len=2048)


def planner_with(retriever, prompts, threads: int = 1) -> Planner:
    routes = RoutingTable(BASE)
    routes.put(DomainRoute("lore", ("kb",), BASE, None, None))
    return Planner(BASE, routes, retriever, prompts, threads=threads)


def chat(question: str) -> dict:
    return {"model": "lore", "messages": [{"role": "user", "content": question}], "max_tokens": 8}


async def test_plans_on_the_event_loop_when_the_gateway_is_idle(prompts):
    retriever = RecordingRetriever()
    plan = await planner_with(retriever, prompts).plan("chat", chat("beacon?"), gateway_idle=True)
    assert retriever.threads == [threading.get_ident()]
    assert plan.citations[0]["document_id"] == "doc-1"
    assert "The beacon is blue." in plan.payload["messages"][0]["content"]


async def test_a_plan_that_would_load_a_corpus_goes_to_a_thread_even_when_idle(prompts):
    retriever = RecordingRetriever(loaded=False)
    planner = planner_with(retriever, prompts)
    plan = await planner.plan("chat", chat("beacon?"), gateway_idle=True)
    assert retriever.threads and retriever.threads[0] != threading.get_ident()
    assert plan.citations[0]["document_id"] == "doc-1"
    await planner.plan("chat", chat("beacon?"), gateway_idle=True)  # now in memory: on the loop
    assert retriever.threads[-1] == threading.get_ident()


async def test_plans_in_a_worker_thread_while_other_requests_are_in_flight(prompts):
    retriever = RecordingRetriever()
    plan = await planner_with(retriever, prompts).plan("chat", chat("beacon?"), gateway_idle=False)
    assert retriever.threads and retriever.threads[0] != threading.get_ident()
    assert plan.citations[0]["document_id"] == "doc-1"


async def test_a_plan_beside_one_running_in_a_thread_goes_to_a_thread_too(prompts):
    gate = threading.Event()
    retriever = RecordingRetriever(gate)
    planner = planner_with(retriever, prompts, threads=2)
    first = asyncio.create_task(planner.plan("chat", chat("first?"), gateway_idle=False))
    while not retriever.threads:  # the first plan is searching, held at the gate
        await asyncio.sleep(0.001)
    second = asyncio.create_task(planner.plan("chat", chat("second?"), gateway_idle=True))
    while len(retriever.threads) < 2:  # the loop is free: the second plan did not block it
        await asyncio.sleep(0.001)
    gate.set()
    await asyncio.gather(first, second)
    loop_thread = threading.get_ident()
    assert loop_thread not in retriever.threads
    # once nothing runs in a thread, an idle gateway plans on the loop again
    await planner.plan("chat", chat("third?"), gateway_idle=True)
    assert retriever.threads[-1] == loop_thread


async def test_no_more_plans_run_at_once_than_its_threads(prompts):
    """Five plans, two threads. Every search is held until the test lets it go, one at a time and
    only once the next plan has started, so each step waits for an event, never for a time.
    The planner's threads exist from the moment a plan is queued: with two searches held and all
    five plans queued, a third would already be there."""
    gates = {f"q{i}?": threading.Event() for i in range(5)}
    started: list[str] = []
    running, most = [0], [0]
    lock = threading.Lock()

    class HeldRetriever(RecordingRetriever):
        def search(self, names, query, *args, **kwargs):
            with lock:
                started.append(query)
                running[0] += 1
                most[0] = max(most[0], running[0])
            try:
                assert gates[query].wait(60), "the test never released this search"
                return super().search(names, query, *args, **kwargs)
            finally:
                with lock:
                    running[0] -= 1

    async def until(condition) -> None:
        for _ in range(60_000):  # a generous bound (60 s at least); each step is an event
            if condition():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the plans made no progress")

    earlier = set(threading.enumerate())  # other planners' threads, not yet gone
    planner = planner_with(HeldRetriever(), prompts, threads=2)
    plans = [asyncio.create_task(planner.plan("chat", chat(q), gateway_idle=False)) for q in gates]
    try:
        await until(lambda: len(started) >= 2)  # the loop ran all five tasks: all five plans are queued
        workers = [t for t in set(threading.enumerate()) - earlier if t.name.startswith("graft-plan")]
        assert len(workers) == 2, [t.name for t in workers]
        assert running[0] == 2
        for released in range(5):  # let the oldest go; the next plan may start only now
            gates[started[released]].set()
            await until(lambda: len(started) >= min(released + 3, 5))
        done = await asyncio.gather(*plans)
        assert len(done) == 5 and most[0] == 2 and sorted(started) == sorted(gates)
    finally:
        for gate in gates.values():  # a failed check must not leave threads waiting
            gate.set()
        await asyncio.gather(*plans, return_exceptions=True)
        planner.close()
