import json
import os

from exporter.results import ProbeResult, ResultsWriter, read_results


def record(i, ttft=None):
    return ProbeResult(target="t", scenario="s", model="m", case=f"c{i}", ok=True, ttft_s=0.1 * i if ttft is None else ttft,
                       request_duration_s=1.0, inter_token_gaps_s=[0.01, 0.02], eval_count=3, eval_duration_s=0.5)


def test_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    w = ResultsWriter(path)
    for i in range(3):
        assert w.write(record(i))
    w.close()
    back = list(read_results(path))
    assert [r.case for r in back] == ["c0", "c1", "c2"]
    assert back[1].ttft_s == 0.1 and back[1].output_tokens_per_s == 6.0
    line = json.loads(path.read_text().splitlines()[0])
    assert line["output_tokens_per_s"] == 6.0 and "prompt" not in line


def test_torn_last_line_is_skipped_and_next_writer_appends_cleanly(tmp_path):
    path = tmp_path / "r.jsonl"
    w = ResultsWriter(path)
    w.write(record(0))
    w.close()
    with open(path, "ab") as f:
        f.write(b'{"target": "t", "scen')  # a crash in the middle of a line
    assert [r.case for r in read_results(path)] == ["c0"]
    w = ResultsWriter(path)
    w.write(record(1))
    w.close()
    assert [r.case for r in read_results(path)] == ["c0", "c1"]


def test_garbage_lines_are_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('not json\n[1,2]\n\n' + json.dumps(record(5).to_dict()) + "\n")
    assert [r.case for r in read_results(path)] == ["c5"]


def test_unwritable_file_is_counted_not_raised(tmp_path):
    from prometheus_client import CollectorRegistry

    from exporter.metrics import ExporterMetrics
    from exporter.sinks import ResultsFileSink

    target = tmp_path / "dir-not-file"
    target.mkdir()
    registry = CollectorRegistry()
    m = ExporterMetrics(registry)
    sink = ResultsFileSink(ResultsWriter(target), m.results_lines, m.results_errors)
    sink.on_result(record(0))
    assert registry.get_sample_value("llm_exporter_results_write_errors_total") == 1
    assert registry.get_sample_value("llm_exporter_results_lines_total") == 0


def test_writes_after_close_are_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    w = ResultsWriter(path)
    w.write(record(0))
    w.close()
    assert not w.write(record(1))
    assert os.path.getsize(path) > 0 and len(list(read_results(path))) == 1


def test_size_based_rotation_keeps_n_files(tmp_path):
    path = tmp_path / "r.jsonl"
    one_line = len(json.dumps(record(0, 0.5).to_dict(), separators=(",", ":"))) + 1
    w = ResultsWriter(path, max_bytes=3 * one_line + 10, keep=2)
    for i in range(10):
        assert w.write(record(i, 0.5))
    w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]
    assert [r.case for r in read_results(path)] == ["c9"]
    assert [r.case for r in read_results(str(path) + ".1")] == ["c6", "c7", "c8"]
    assert [r.case for r in read_results(str(path) + ".2")] == ["c3", "c4", "c5"]
    # The new writer picks up the current file's size and keeps rotating at the limit.
    w = ResultsWriter(path, max_bytes=3 * one_line + 10, keep=2)
    for i in range(10, 13):
        w.write(record(i, 0.5))
    w.close()
    assert [r.case for r in read_results(path)] == ["c12"]
