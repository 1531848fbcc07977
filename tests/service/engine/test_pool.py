from adapters_store.hotload import AdapterHost
from service.engine.client import EngineClient
from service.engine.pool import EnginePool


async def test_idle_while_no_engine_has_a_request_in_flight():
    pool = EnginePool([EngineClient("http://127.0.0.1:9"), EngineClient("http://127.0.0.1:10")], "base")
    for engine in pool.engines:
        engine.ready = True
    assert pool.idle
    async with pool.lease():
        assert not pool.idle
        async with pool.lease():
            assert not pool.idle
        assert not pool.idle
    assert pool.idle
    await pool.close()


async def test_the_pool_is_the_adapter_host_and_owns_residency():
    pool = EnginePool([EngineClient("http://127.0.0.1:9")], "base")
    assert isinstance(pool, AdapterHost)
    engine = pool.engines[0].url
    assert not pool.holds(engine, "tone@1") and pool.in_flight("tone@1") == 0
    await pool.close()
