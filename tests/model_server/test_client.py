"""ModelClient against the scripted server: order, n, retries, faults, cache, limits, chat."""

from __future__ import annotations

import concurrent.futures
import email.utils
import pathlib
import time
from collections.abc import Iterator

import pytest

from model_server import client as client_mod
from model_server.client import ClientConfig, ModelClient, SamplingParams
from tests.model_server.scripted import ScriptedServer, scripted_text

pytestmark = pytest.mark.timeout(300)  # retries with back-off


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(slow_s=2.0, hang_s=20.0) as srv:
        yield srv


def make_client(server: ScriptedServer, **overrides: object) -> ModelClient:
    settings = dict(
        base_url=server.base_url,
        model="scripted",
        max_in_flight=8,
        timeout_s=1.0,
        max_retries=3,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        health_interval_s=0.2,
    )
    settings.update(overrides)
    return ModelClient(ClientConfig(**settings))


def test_results_in_input_order_with_n_choices_and_usage(server: ScriptedServer) -> None:
    prompts = [f"prompt {i}" for i in range(20)]
    with make_client(server) as client:
        results = client.complete(prompts, SamplingParams(n=3, seed=7, max_tokens=16))
        metrics = client.metrics.snapshot()
    assert [r.prompt for r in results] == prompts
    for prompt, result in zip(prompts, results, strict=True):
        assert result.ok and result.attempts == 1
        assert [c.index for c in result.choices] == [0, 1, 2]
        assert [c.text for c in result.choices] == [scripted_text(prompt, 7, i) for i in range(3)]
        assert result.completion_tokens > 0 and result.prompt_tokens == 2
    assert metrics["requests"] == 20 and metrics["completed"] == 20 and metrics["retries"] == 0
    assert metrics["completion_tokens"] == sum(r.completion_tokens for r in results)


def test_per_prompt_sampling_params_and_stop_sent(server: ScriptedServer) -> None:
    params = [SamplingParams(seed=i, stop=("## Example",)) for i in range(3)]
    with make_client(server) as client:
        results = client.complete(["a", "b", "c"], params)
    assert [r.choices[0].text for r in results] == [
        scripted_text(p, i, 0) for i, p in enumerate("abc")
    ]
    with pytest.raises(ValueError):
        make_client(server).complete(["a"], params)


@pytest.mark.parametrize(
    ("marker", "attempts"),
    [("FAULT:500x2", 3), ("FAULT:TIMEOUT", 2), ("FAULT:DROP", 2), ("FAULT:MALFORMED", 2)],
)
def test_transient_faults_are_retried(server: ScriptedServer, marker: str, attempts: int) -> None:
    with make_client(server) as client:
        (result,) = client.complete([f"x {marker}"], SamplingParams())
        metrics = client.metrics.snapshot()
    assert result.ok, result.error
    assert result.attempts == attempts
    assert metrics["retries"] == attempts - 1
    assert result.choices[0].text == scripted_text(f"x {marker}", None, 0)


def test_429_waits_for_retry_after(server: ScriptedServer) -> None:
    with make_client(server) as client:
        (result,) = client.complete(["x FAULT:429"], SamplingParams())
    assert result.ok and result.attempts == 2
    (times,) = server.attempt_times.values()
    # The client's own back-off is at most 0.05 s here; the 1 s gap is the server's ask.
    assert times[1] - times[0] >= 0.9


def test_client_error_is_not_retried_and_keeps_the_server_message(server: ScriptedServer) -> None:
    with make_client(server) as client:
        (result,) = client.complete(["x FAULT:400"], SamplingParams())
    assert not result.ok
    assert result.error_kind == client_mod.CLIENT_ERROR
    assert result.status_code == 400 and result.attempts == 1
    assert "maximum context length" in result.error
    assert server.generation_requests == 1


def test_retries_are_bounded(server: ScriptedServer) -> None:
    with make_client(server, max_retries=2) as client:
        (result,) = client.complete(["x FAULT:ALWAYS500"], SamplingParams())
        metrics = client.metrics.snapshot()
    assert result.error_kind == client_mod.EXHAUSTED
    assert result.attempts == 3 and server.generation_requests == 3
    assert "500" in result.error
    assert metrics["errors"] == 1


def test_dead_engine_fails_pending_requests_after_the_down_limit(server: ScriptedServer) -> None:
    # The request timeout (60 s) and the server's hang (20 s) are far longer than the watchdog
    # plus the 2 s the client may wait for a down engine.
    with make_client(server, timeout_s=60.0, engine_down_max_s=2.0) as client:
        futures = [client.submit("x FAULT:DEAD", SamplingParams())]
        deadline = time.monotonic() + 15
        while not server.dead and time.monotonic() < deadline:  # the engine has died
            time.sleep(0.02)
        assert server.dead
        # Sent after the death: none of these can be answered before the outage.
        futures += [client.submit(f"y {i}", SamplingParams()) for i in range(3)]
        results = [f.result(timeout=20) for f in futures]
        assert client.engine_dead
        late = client.complete(["z"], SamplingParams())[0]
        metrics = client.metrics.snapshot()
    assert all(r.error_kind == client_mod.ENGINE_DEAD for r in results)
    assert all(r.queued_s >= 1.5 for r in results)  # they waited for the engine first
    assert late.error_kind == client_mod.ENGINE_DEAD  # still down: no wait is left
    assert metrics["outages"] == 1 and metrics["withdrawn"] >= 1


def test_requests_wait_through_an_outage_and_finish_after_it(server: ScriptedServer) -> None:
    with make_client(server, timeout_s=60.0, engine_down_max_s=60.0) as client:
        server.dead = True  # generation hangs, /health answers 503
        futures = [client.submit(f"o {i}", SamplingParams(seed=i)) for i in range(6)]
        deadline = time.monotonic() + 15
        while not client.engine_dead and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.engine_dead  # the watchdog saw the outage
        server.dead = False
        results = [f.result(timeout=30) for f in futures]
        assert client.engine_dead is None  # the verdict expired on a healthy re-probe
        metrics = client.metrics.snapshot()
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.choices[0].text for r in results] == [scripted_text(f"o {i}", i, 0) for i in range(6)]
    assert metrics["outages"] == 1 and metrics["retries"] == 0
    assert metrics["withdrawn"] == 6  # each hung attempt was taken off the wire once


def test_overload_answers_do_not_use_up_retries(server: ScriptedServer) -> None:
    with make_client(server, max_retries=0) as client:
        (result,) = client.complete(["x FAULT:429"], SamplingParams())
        metrics = client.metrics.snapshot()
    assert result.ok and result.attempts == 2
    assert metrics["overloaded"] == 1 and metrics["retries"] == 0


def test_waiting_for_admission_is_not_part_of_the_timeout(server: ScriptedServer) -> None:
    # One request at a time, each 0.4 s on the wire, timeout 1 s: the last one waits ~2 s
    # for admission and must still succeed on its first attempt.
    server.delay_s = 0.4
    with make_client(server, max_in_flight=1, timeout_s=1.0, max_retries=0) as client:
        results = client.complete([f"q{i}" for i in range(6)], SamplingParams())
    assert all(r.ok and r.attempts == 1 for r in results), [r.error for r in results]
    assert max(r.queued_s for r in results) > 1.0
    assert server.max_in_flight == 1


def test_a_slow_health_endpoint_is_not_a_dead_engine(server: ScriptedServer) -> None:
    server.delay_s = 1.0
    server.health_delay_s = 1.0
    with make_client(server, timeout_s=10.0, health_timeout_s=0.2, health_interval_s=0.1) as c:
        results = c.complete(["slow a", "slow b"], SamplingParams())
        assert not c.engine_dead
    assert all(r.ok for r in results)
    assert server.health_requests >= 2  # the watchdog did probe


def test_in_flight_limit_is_respected(server: ScriptedServer) -> None:
    server.delay_s = 0.1
    with make_client(server, max_in_flight=4, timeout_s=10.0) as client:
        results = client.complete([f"p{i}" for i in range(24)], SamplingParams())
    assert all(r.ok for r in results)
    assert 2 <= server.max_in_flight <= 4


def test_chat_mode(server: ScriptedServer) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    with make_client(server) as client:
        (result,) = client.chat([messages], SamplingParams(n=2, seed=1))
    assert result.ok
    assert [c.text for c in result.choices] == [scripted_text("hi", 1, i) for i in range(2)]
    assert '"role": "user"' in result.prompt


def test_cache_second_run_sends_nothing(server: ScriptedServer, tmp_path: pathlib.Path) -> None:
    prompts = [f"cached {i}" for i in range(10)]
    params = SamplingParams(n=2, seed=3, temperature=0.7)
    with make_client(server, cache_dir=str(tmp_path / "cache")) as client:
        first = client.complete(prompts, params)
    assert server.generation_requests == 10
    with make_client(server, cache_dir=str(tmp_path / "cache")) as client:
        second = client.complete(prompts, params)
        metrics = client.metrics.snapshot()
    assert server.generation_requests == 10  # nothing new reached the server
    assert metrics["cache_hits"] == 10 and metrics["requests"] == 0
    assert [r.choices for r in second] == [r.choices for r in first]
    assert all(r.cached for r in second)
    # Another seed is another key: it must be sent.
    with make_client(server, cache_dir=str(tmp_path / "cache")) as client:
        client.complete(prompts[:1], SamplingParams(n=2, seed=4, temperature=0.7))
    assert server.generation_requests == 11


def test_errors_and_short_answers_are_not_cached(
    server: ScriptedServer, tmp_path: pathlib.Path
) -> None:
    cache_dir = str(tmp_path / "cache")
    for _ in range(2):
        with make_client(server, cache_dir=cache_dir, max_retries=0) as client:
            client.complete(["e FAULT:ALWAYS500", "f FAULT:FEWER"], SamplingParams(n=2))
    assert server.generation_requests == 4


def test_seed_can_be_stripped(server: ScriptedServer) -> None:
    with make_client(server, send_seed=False) as client:
        (result,) = client.complete(["s"], SamplingParams(seed=99))
    assert result.choices[0].text == scripted_text("s", None, 0)


def test_unreachable_server_gives_an_error_result() -> None:
    config = ClientConfig(
        base_url="http://127.0.0.1:9",
        model="m",
        max_retries=2,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        health_failures_for_dead=1,
        engine_down_max_s=1.0,
    )
    with ModelClient(config) as client:
        (result,) = client.complete(["x"], SamplingParams())
    assert not result.ok
    assert result.error_kind == client_mod.ENGINE_DEAD  # after waiting 1 s for it to come up
    assert result.queued_s >= 0.9


def test_closed_client_refuses_work(server: ScriptedServer) -> None:
    client = make_client(server)
    client.close()
    client.close()  # idempotent
    with pytest.raises(RuntimeError):
        client.submit("x", SamplingParams())


def test_close_resolves_waiting_futures(server: ScriptedServer) -> None:
    server.delay_s = 1.0
    client = make_client(server, timeout_s=30.0, max_in_flight=1)
    futures = [client.submit(f"w{i}", SamplingParams()) for i in range(3)]
    time.sleep(0.2)
    client.close()
    results = [f.result(timeout=5) for f in futures]
    assert all(isinstance(r, client_mod.CompletionResult) for r in results)
    assert any(r.error_kind == client_mod.CLOSED for r in results)


def test_retry_after_parsing_and_backoff_bounds() -> None:
    assert client_mod._retry_after("3") == 3.0
    assert client_mod._retry_after(None) is None
    assert client_mod._retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= client_mod._retry_after(future) <= 31
    with ModelClient(
        ClientConfig(base_url="http://127.0.0.1:9", model="m", backoff_base_s=1, backoff_max_s=4)
    ) as client:
        delays = [client._backoff(attempt) for attempt in range(1, 12)]
    assert all(0.5 <= d <= 4.0 for d in delays)
    assert max(delays[5:]) <= 4.0 and min(delays[5:]) >= 2.0


def test_sampling_params_validation_and_request_body() -> None:
    body = SamplingParams(stop=["a"], seed=5, n=2).to_request()
    assert body == {
        "temperature": 0.0, "top_p": 1.0, "max_tokens": 256, "n": 2, "stop": ["a"], "seed": 5,
    }  # fmt: skip
    assert "seed" not in SamplingParams().to_request()
    with pytest.raises(ValueError):
        SamplingParams(n=0)
    with pytest.raises(ValueError):
        ClientConfig(base_url="x", model="m", max_in_flight=0)


def test_submit_is_thread_safe(server: ScriptedServer) -> None:
    with make_client(server) as client, concurrent.futures.ThreadPoolExecutor(4) as pool:
        batches = list(
            pool.map(
                lambda i: client.complete([f"t{i}-{j}" for j in range(5)], SamplingParams()),
                range(8),
            )
        )
    assert sum(len(b) for b in batches) == 40
    assert all(r.ok for b in batches for r in b)
