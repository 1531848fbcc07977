from service.engine.client import EngineClient
from service.engine.pool import EnginePool


async def test_idle_while_no_engine_has_a_request_in_flight():
    pool = EnginePool([EngineClient("http://127.0.0.1:9"), EngineClient("http://127.0.0.1:10")])
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
