"""Prompts from a file: the formats, the filters, the seeded choice, and a benchmark run that sends them."""

import json

import httpx
import pytest

from loraplex.loadgen.cli import main
from loraplex.loadgen.dataset import (
    Dataset,
    DatasetEntry,
    DatasetPrompt,
    load_dataset,
    read_entries,
    usable,
)
from loraplex.loadgen.lengths import LengthDist
from loraplex.loadgen.workload import WorkloadSpec, build_workload

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A tiny model answers every question with random words.",
    "Servers batch requests from many adapters in one step.",
    "Rain fell on the town all night and the streets were quiet.",
    "She wrote the report before the meeting started.",
    "Paged caches keep memory for sequences in small blocks.",
]


def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    return path


def test_json_lines_with_lengths_answers_and_alternative_keys(tmp_path):
    path = _write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "one", "output_len": 7},
            {"text": "two", "completion": "an answer"},
            {"input": "three", "max_new_tokens": 3, "output": "ignored: the length wins"},
            {"prompt": "four"},
        ],
    )
    assert read_entries(path) == [
        DatasetEntry("one", 7, None),
        DatasetEntry("two", None, "an answer"),
        DatasetEntry("three", 3, "ignored: the length wins"),
        DatasetEntry("four", None, None),
    ]


def test_sharegpt_takes_the_first_user_turn_and_the_reply_after_it(tmp_path):
    path = tmp_path / "sharegpt.json"
    path.write_text(
        json.dumps(
            [
                {"id": "a", "conversations": [
                    {"from": "system", "value": "be brief"},
                    {"from": "human", "value": "first question"},
                    {"from": "gpt", "value": "first answer"},
                    {"from": "human", "value": "second question"},
                ]},
                {"id": "b", "conversations": [{"from": "gpt", "value": "no user turn: skipped"}]},
                {"messages": [{"role": "user", "content": "last question"}]},
                {"prompt": "a plain entry in the same list", "output_len": 5},
            ]
        ),
        encoding="utf-8",
    )  # fmt: skip
    assert read_entries(path) == [
        DatasetEntry("first question", None, "first answer"),
        DatasetEntry("last question", None, None),
        DatasetEntry("a plain entry in the same list", 5, None),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "ok"}\n{"prompt": \n', "d.jsonl:2: not valid JSON"),
        ('{"prompt": "ok"}\n{"question": "no prompt key"}\n', "d.jsonl:2: no prompt"),
        ('{"prompt": "ok", "output_len": 0}\n', "d.jsonl:1: the output length must be a positive integer"),
        ('{"prompt": "ok", "output_len": "12"}\n', "must be a positive integer"),
        ("[1, 2]", "d.jsonl: entry 0: expected a JSON object"),
        ('[{"conversations": [{"from": "human", "value": 3}]}]', "a turn's text must be a string"),
        ("\n\n", "no prompts found"),
    ],
)
def test_malformed_files_name_the_line_and_the_problem(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_entries(path)


def test_a_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        read_entries(tmp_path / "absent.jsonl")


def test_usable_skips_short_entries_and_those_the_server_would_refuse():
    ids = list(range(10))
    assert usable(DatasetEntry("p", 6), ids, None, 16, 32) == DatasetPrompt("p", tuple(ids), 6)
    assert usable(DatasetEntry("p"), ids[:3], None, 16, 32) is None  # prompt under 4 tokens
    assert usable(DatasetEntry("p"), ids, 3, 16, 32) is None  # reference answer under 4 tokens
    assert usable(DatasetEntry("p", 3), ids, None, 16, 32) is None  # asked length under 4
    assert usable(DatasetEntry("p", 5), ids, None, 9, 32) is None  # prompt over max_input_length
    assert usable(DatasetEntry("p", 23), ids, None, 16, 32) is None  # 10 + 23 > max_total_tokens
    assert usable(DatasetEntry("p", 22), ids, None, 16, 32).output_len == 22  # 10 + 22 fits exactly
    assert usable(DatasetEntry("p"), ids, 8, None, None).output_len == 8  # the answer's count
    assert usable(DatasetEntry("p"), ids, None, 16, 32).output_len is None  # left to --output-len


def test_workload_sends_the_dataset_prompts_and_fills_missing_lengths_from_the_distribution():
    prompts = (
        DatasetPrompt("alpha", (5, 6, 7, 8), 9),
        DatasetPrompt("beta", (9, 10, 11, 12, 13), None),
        DatasetPrompt("gamma", (14, 15, 16, 17), 4),
    )
    dataset = Dataset(prompts, "d.jsonl", "0" * 64, entries=5, examined=4)
    spec = WorkloadSpec(3, output_len=LengthDist.parse("20:30"), popularity="base", dataset=dataset, seed=3)
    requests = build_workload(spec)
    synthetic = build_workload(
        WorkloadSpec(3, output_len=LengthDist.parse("20:30"), popularity="base", seed=3)
    )
    assert [r.prompt for r in requests] == ["alpha", "beta", "gamma"]
    assert [r.prompt_len for r in requests] == [4, 5, 4]
    # The missing length is the one the same seed draws for that request without a dataset.
    assert [r.output_len for r in requests] == [9, synthetic[1].output_len, 4]
    described = spec.describe()
    assert described["prompt_len"] == "dataset" and described["prompt_vocab"] is None
    assert described["output_len"] == "dataset, else 20:30"
    assert described["dataset"] == {
        "name": "d.jsonl", "sha256": "0" * 64, "entries": 5, "examined": 4, "chosen": 3
    }  # fmt: skip
    two = WorkloadSpec(2, popularity="base", dataset=Dataset(prompts[:1] + prompts[2:], "d", "", 2, 2))
    assert two.describe()["output_len"] == "dataset"
    with pytest.raises(ValueError, match="holds 3 prompts, 4 requests"):
        build_workload(WorkloadSpec(4, popularity="base", dataset=dataset))


def _tokenize(url, text):
    return [t["id"] for t in httpx.post(url + "/tokenize", json={"inputs": text}).json()]


@pytest.fixture
def mixed_file(tmp_path, server):
    long_prompt = " ".join(SENTENCES * 4)
    assert len(_tokenize(server.url, long_prompt)) > 128  # over the server's max_input_length
    assert len(_tokenize(server.url, "Hi")) < 4
    records = [{"prompt": s, "output_len": 4 + i} for i, s in enumerate(SENTENCES)]
    records += [{"prompt": "Hi", "output_len": 5}, {"prompt": long_prompt, "output_len": 5}]
    records.append({"prompt": SENTENCES[0], "completion": "Ok"})  # answer under 4 tokens
    return _write_jsonl(tmp_path / "mixed.jsonl", records)


def test_load_counts_on_the_server_filters_and_picks_by_seed(server, mixed_file):
    info = httpx.get(server.url + "/info").json()
    dataset = load_dataset(mixed_file, server.url, 6, seed=0, info=info)
    assert sorted(p.prompt for p in dataset.prompts) == sorted(SENTENCES)
    for prompt in dataset.prompts:
        assert list(prompt.prompt_ids) == _tokenize(server.url, prompt.prompt)
        assert prompt.output_len == 4 + SENTENCES.index(prompt.prompt)
    assert dataset.entries == 9 and dataset.examined == 9 and len(dataset.describe()["sha256"]) == 64
    again = load_dataset(mixed_file, server.url, 6, seed=0, info=info)
    assert again.prompts == dataset.prompts
    orders = {
        tuple(p.prompt for p in load_dataset(mixed_file, server.url, 3, s, info).prompts) for s in range(6)
    }
    assert len(orders) > 1
    with pytest.raises(ValueError, match="only 6 of its 9 entries are usable"):
        load_dataset(mixed_file, server.url, 7, seed=0, info=info)


def test_bench_cli_runs_a_dataset_with_its_lengths(server, tiny_adapters, mixed_file, tmp_path):
    _, ids = tiny_adapters
    out = tmp_path / "report.json"
    main(
        [
            "--url", server.url,
            "--dataset", str(mixed_file),
            "--adapter-ids", ",".join(ids),
            "--adapter-counts", "2",
            "--popularity", "roundrobin",
            "--num-requests", "5",
            "--concurrency", "3",
            "--out", str(out),
            "--no-progress",
            "--no-base",
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    workload = report["workload"]
    assert workload["prompt_len"] == "dataset" and workload["output_len"] == "dataset"
    assert workload["dataset"]["name"] == "mixed.jsonl" and workload["dataset"]["chosen"] == 5
    (run,) = report["runs"]
    summary = run["summary"]
    assert summary["completed"] == 5 and summary["failed"] == 0 and summary["length_mismatches"] == 0
    chosen = load_dataset(mixed_file, server.url, 5, 0, httpx.get(server.url + "/info").json()).prompts
    assert summary["generated_tokens"] == sum(p.output_len for p in chosen)
    assert summary["prompt_tokens"] == sum(len(p.prompt_ids) for p in chosen)
    server.wait_idle()


def test_bench_cli_reports_an_unusable_dataset_as_an_error(server, tmp_path, capsys):
    path = _write_jsonl(tmp_path / "short.jsonl", [{"prompt": "Hi", "output_len": 5}])
    with pytest.raises(SystemExit) as exit_info:
        main(["--url", server.url, "--dataset", str(path), "--num-requests", "1", "--no-progress"])
    assert exit_info.value.code == 2
    assert "only 0 of its 1 entries are usable" in capsys.readouterr().err
