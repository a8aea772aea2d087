"""OpenTelemetry traces, read back through the SDK's in-memory span exporter.

The models are a STAND-IN hosted API (tests/standins/openai_standin.py) that keeps every
request's headers: what is checked is the trace symoe writes and the ``traceparent`` the
server receives. ``test_solve_exports_traces_over_otlp_from_real_servers`` runs the command
line on the real embedded servers, exporting over OTLP/HTTP to a stand-in collector.
"""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from standins.openai_standin import ScriptedAPI
from symoe_agents import SymbolicMoE
from symoe_agents.config import parse_config


def recording() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def hosted(api: ScriptedAPI, samples: int = 2):
    models = {m: {"backend": "openai", "base_url": api.base_url, "model": m, "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}
              for m in ("sk", "e1", "e2", "agg")}  # fmt: skip
    return parse_config({"k": 2, "models": models, "roles": {"skill_inferencer": "sk", "experts": ["e1", "e2"], "aggregator": "agg"},
                         "sampling": {"skill_inferencer": {"samples": samples, "temperature": 0.7, "max_tokens": 64}},
                         "concurrency": {"max_in_flight": 1}}, "test")  # fmt: skip


def header_ids(headers: dict[str, str]) -> tuple[int, int]:
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled (the SDK also sets level 2's random-id bit)
    return int(trace_id, 16), int(span_id, 16)


async def test_a_question_is_one_trace_with_every_call_and_the_server_hears_its_span(tmp_path):
    provider, exporter = recording()
    async with ScriptedAPI([500]) as api:  # the first request fails once with a 500 and is retried
        async with SymbolicMoE(hosted(api), tracer_provider=provider, cache=tmp_path / "c.sqlite") as moe:
            [record] = await moe.solve_batch([{"id": "q1", "question": "Which? (A) one (B) two"}])
        spans = exporter.get_finished_spans()
        roots = [s for s in spans if s.name == "symoe.question"]
        assert len(roots) == 1
        root = roots[0]
        tid = root.context.trace_id
        assert root.parent is None and root.attributes["symoe.question.id"] == "q1"
        assert root.attributes["symoe.experts"] == tuple(record.experts) and root.attributes["symoe.final_source"] == record.final_source
        assert root.attributes["symoe.cost_usd"] == pytest.approx(record.usage.cost_usd)
        children = [s for s in spans if s.context.trace_id == tid and s is not root]
        assert all(s.parent.span_id == root.context.span_id for s in children)  # a flat tree under the question
        calls = [s for s in children if s.name.startswith("chat ")]
        roles = sorted((s.attributes["symoe.role"], s.attributes["gen_ai.request.model"]) for s in calls)
        assert roles == sorted([("skill_inferencer", "sk")] * 2 + [("expert", e) for e in record.experts] + [("aggregator", "agg")])
        [routing] = [s for s in children if s.name == "symoe.routing"]
        assert routing.attributes["symoe.experts"] == tuple(record.experts) and routing.attributes["symoe.routing.method"] == "uniform-no-profiles"
        for s in calls:  # the GenAI conventions, from what the stand-in answered (usage 7 in, 3 out)
            a = s.attributes
            assert s.name == f"chat {a['gen_ai.request.model']}" and s.kind.name == "CLIENT"
            assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.response.model"] == a["gen_ai.request.model"]
            assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (7, 3)
            assert a["gen_ai.response.finish_reasons"] == ("stop",)
            assert (a["server.address"], a["server.port"]) == ("127.0.0.1", api.port)
            assert a["symoe.cost_usd"] == pytest.approx(10 / 1e6)
        assert {s.attributes["gen_ai.request.temperature"] for s in calls if s.attributes["symoe.role"] == "skill_inferencer"} == {0.7}
        # the 500, retried: an event on its call's span, which then succeeded
        retried = [s for s in calls if any(e.name == "retry" for e in s.events)]
        assert len(retried) == 1
        [event] = [e for e in retried[0].events if e.name == "retry"]
        assert event.attributes["symoe.attempt"] == 1 and event.attributes["error.type"] == "InternalServerError"
        assert retried[0].status.is_ok
        # every request carried its call's span: the retried call twice, each other once
        sent = [header_ids(h) for h in api.headers]
        assert sorted(sent) == sorted([(s.context.trace_id, s.context.span_id) for s in calls] + [(tid, retried[0].context.span_id)])
        # the run's own trace: the run and its groups, and the question links to it
        [run] = [s for s in spans if s.name == "symoe.run"]
        groups = [s for s in spans if s.name.startswith("symoe.group ")]
        assert sorted(g.attributes["symoe.group"] for g in groups) == sorted(["skills:sk", *{f"expert:{e}" for e in record.experts}, "aggregate:agg"])
        assert all(g.parent.span_id == run.context.span_id and g.context.trace_id == run.context.trace_id for g in groups)
        assert [link.context.span_id for link in root.links] == [run.context.span_id]
        [skills_group] = [g for g in groups if g.attributes["symoe.group"] == "skills:sk"]
        assert skills_group.attributes["symoe.calls"] == 3  # two samples, one of them sent twice

        # the same question again: answered from the cache, a span each, nothing sent
        exporter.clear()
        heard = api.calls
        async with SymbolicMoE(hosted(api), tracer_provider=provider, cache=tmp_path / "c.sqlite") as moe:
            await moe.solve_batch([{"id": "q1", "question": "Which? (A) one (B) two"}])
        assert api.calls == heard
        calls = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
        assert len(calls) == 5 and all(s.attributes["symoe.cached"] is True for s in calls)
        assert all([e.name for e in s.events] == ["cache_hit"] for s in calls)


async def test_without_a_recording_provider_nothing_is_traced_or_sent():
    async with ScriptedAPI([]) as api:
        async with SymbolicMoE(hosted(api, samples=1)) as moe:  # the global provider: the API's no-op default
            await moe.solve_batch([{"id": "q1", "question": "Which? (A) one (B) two"}])
        assert api.calls == 4 and all("traceparent" not in h for h in api.headers)


class Collector:
    """STAND-IN for an OpenTelemetry collector's OTLP/HTTP receiver (no collector binary here):
    POST /v1/traces with an ``ExportTraceServiceRequest`` in protobuf, answered 200 with an
    empty ``ExportTraceServiceResponse``, as the OTLP specification's HTTP transport says."""

    def __init__(self):
        self.spans: list[tuple[dict, object]] = []  # (resource attributes, span)
        self.paths: list[str] = []

    async def __aenter__(self) -> "Collector":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader, writer) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

        try:
            while True:  # the exporter keeps its connection open between batches
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                self.paths.append(lines[0].split(" ")[1])
                headers = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        self.spans += [(resource, s) for s in ss.spans]
                data = ExportTraceServiceResponse().SerializeToString()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: "
                             + str(len(data)).encode() + b"\r\n\r\n" + data)  # fmt: skip
                await writer.drain()
        except (Exception, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") not in ("array_value", None) else [
            getattr(x, x.WhichOneof("value")) for x in v.array_value.values]  # fmt: skip
    return out


@pytest.mark.servers
async def test_solve_exports_traces_over_otlp_from_real_servers(tmp_path):
    from conftest import read_jsonl, small_pool_toml, symoe_async

    async with Collector() as collector:
        cfg = small_pool_toml(tmp_path, extra=f'\n[telemetry]\ntraces = "otlp"\nendpoint = "http://127.0.0.1:{collector.port}"\n')
        q, out = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
        q.write_text('{"id": "a", "question": "What is 2 + 3? (A) 4 (B) 5"}\n{"id": "b", "question": "Which gas do plants take in? (A) CO2 (B) O2"}\n')
        code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", out, timeout=600)
        assert code == 0, stderr[-3000:]
    assert set(collector.paths) == {"/v1/traces"}
    spans = [s for _, s in collector.spans]
    assert {r.get("service.name") for r, _ in collector.spans} == {"symoe"}
    records = {r["id"]: r for r in read_jsonl(out)}
    by_trace: dict[bytes, list] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    roots = {attrs(s)["symoe.question.id"]: s for s in spans if s.name == "symoe.question"}
    assert set(roots) == {"a", "b"}
    for qid, root in roots.items():
        r = records[qid]
        calls = [s for s in by_trace[root.trace_id] if s.name.startswith("chat ")]
        assert all(s.parent_span_id == root.span_id for s in by_trace[root.trace_id] if s is not root)
        experts = sorted((attrs(s)["gen_ai.request.model"], attrs(s)["gen_ai.usage.output_tokens"]) for s in calls if attrs(s)["symoe.role"] == "expert")
        # an expert drawn twice answers both slots in one request: one span, the tokens of both
        want: dict[str, int] = {}
        for a in r["expert_answers"]:
            want[a["model"]] = want.get(a["model"], 0) + a["completion_tokens"]
        assert experts == sorted(want.items())
        [agg] = [s for s in calls if attrs(s)["symoe.role"] == "aggregator"]
        assert attrs(agg)["gen_ai.usage.output_tokens"] == r["aggregator_answer"]["completion_tokens"]
        assert attrs(agg)["gen_ai.response.finish_reasons"] == [r["aggregator_answer"]["finish_reason"]]
        assert attrs(root)["symoe.experts"] == r["experts"]
    # the servers' lifecycle, beside the questions: one span per process, ready then stop
    servers = [s for s in spans if s.name.startswith("symoe.server ")]
    assert servers and all([e.name for e in s.events][0] == "ready" and [e.name for e in s.events][-1] == "stop" for s in servers)
    assert len({attrs(s)["process.pid"] for s in servers}) == len(servers)
    assert any(s.name == "symoe.run" for s in spans) and any(s.name.startswith("symoe.group skills:") for s in spans)


def parsed(path) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(path.read_text()) for s in fam.samples}


async def test_solve_writes_its_metrics_file_and_a_second_run_counts_cache_hits(tmp_path):
    from conftest import read_jsonl, symoe_async
    from test_costs import PER_CALL, priced_toml, questions

    async with ScriptedAPI([500]) as api:  # one retried 500: the call still ends ok
        cfg, q, out, prom = priced_toml(tmp_path, api), questions(tmp_path, 4), tmp_path / "a.jsonl", tmp_path / "run.prom"
        code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", out, "--metrics", prom, timeout=300)
        assert code == 0, stderr[-3000:]
        m = parsed(prom)
        records = read_jsonl(out)
        experts = [e for r in records for e in r["experts"]]
        calls = {("sk", "skills"): 4, ("agg", "aggregator"): 4, **{(e, "experts"): experts.count(e) for e in set(experts)}}
        for (model, stage), n in calls.items():
            assert m[("symoe_calls_total", (("model", model), ("outcome", "ok"), ("stage", stage)))] == n
            assert m[("symoe_tokens_total", (("direction", "input"), ("model", model)))] == 7 * n  # the stand-in's usage
            assert m[("symoe_tokens_total", (("direction", "output"), ("model", model)))] == 3 * n
            assert m[("symoe_cost_usd_total", (("model", model),))] == pytest.approx(PER_CALL[model] * n)
        assert m[("symoe_questions_total", (("source", "aggregator"),))] == 4
        assert m[("symoe_stage_latency_seconds_count", (("stage", "experts"),))] == 8
        assert not any(n == "symoe_errors_total" and v for (n, _), v in m.items())

        again = tmp_path / "b.jsonl"  # the same questions, all from the cache
        code, _, stderr = await symoe_async("solve", q, "--config", cfg, "-o", again, "--cache", tmp_path / "a.cache.sqlite", "--metrics", prom, timeout=300)
        assert code == 0, stderr[-3000:]
        m = parsed(prom)
        assert m[("symoe_cache_hits_total", (("model", "sk"),))] == 4 and m[("symoe_cache_hits_total", (("model", "agg"),))] == 4
        assert not any(n == "symoe_tokens_total" and v for (n, _), v in m.items())  # nothing was asked


async def test_a_metrics_file_that_cannot_be_written_is_refused_before_anything_starts(tmp_path):
    from conftest import symoe_async
    from test_costs import priced_toml, questions

    async with ScriptedAPI([]) as api:
        code, _, stderr = await symoe_async("solve", questions(tmp_path, 1), "--config", priced_toml(tmp_path, api), "-o", tmp_path / "a.jsonl",
                                            "--metrics", tmp_path, timeout=120)  # fmt: skip
        assert code == 2 and "the metrics file" in stderr and "is a folder" in stderr and api.calls == 0
