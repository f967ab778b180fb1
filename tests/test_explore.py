"""Novelty-LLM pieces that need no engine: transitions, examples, prompts, tokenizer, key sets, bad input."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest

from catalog.vocabulary import ClusterVocabulary
from explore.examples import ExampleConfig, build_examples, novelty_transitions
from explore.keys import build_key_set, check_key_rows
from explore.model_info import NoveltyModelInfo, read_model_info
from explore.prompts import PromptFormat, tokenizer_texts
from explore.sft import SFTConfig, collate
from explore.tokenizer import check_expressible
from lm.lora import LoraSettings
from lm.presets import check_causal_lm_folder
from lm.tokenizer import build_cluster_tokenizer


@pytest.fixture(scope="module")
def vocab(ml_catalog):
    return ClusterVocabulary.from_clusters(ml_catalog.clusters)


def test_novelty_transitions_skip_clusters_in_the_key():
    h = [1, 2, 1, 3, 2, 4]
    assert novelty_transitions(h, 2) == [((1, 2), 3), ((2, 1), 3), ((1, 3), 2), ((3, 2), 4)]
    assert novelty_transitions([5, 6], 2) == []  # no step after the key
    assert novelty_transitions([1, 2, 1, 2], 2) == []  # never leaves the key


def _histories(rows):
    return pa.table(
        {
            "member_id": pa.array([m for m, _ in rows], pa.int64()),
            "clusters": pa.array([h for _, h in rows], pa.list_(pa.int32())),
        }
    )


def test_examples_cap_per_key_split_members_and_count_bad_histories():
    rows = [(m, [0, 1, 2, 3] if m < 30 else [0, 1, 4]) for m in range(60)]
    rows += [(100, [0]), (101, [0, 99, 1, 2])]  # too short; unknown cluster id
    train, evals, stats = build_examples(
        _histories(rows), ExampleConfig(k=2, max_per_key=5, eval_fraction=0.2), 5
    )
    assert stats["too_short"] == 1 and stats["unknown_cluster"] == 1
    per_key = {}
    for key in train.keys:
        per_key[key] = per_key.get(key, 0) + 1
    assert per_key[(0, 1)] == 5 and max(per_key.values()) <= 5  # (0, 1) occurs 60 times before the cap
    assert not set(train.members) & set(evals.members)  # members are split, not examples
    assert len(evals) > 0 and stats["eval_examples"] == len(evals)


def test_vocabulary_rejects_bad_keys_and_names(vocab):
    assert vocab.check_key([3, 4], 2) == (3, 4)
    with pytest.raises(ValueError, match=r"history_key=\[3, 999\]: unknown cluster id\(s\) \[999\]"):
        vocab.check_key([3, 999], 2)
    with pytest.raises(ValueError, match=r"has 1 clusters, the model reads K=2"):
        vocab.check_key([3], 2)
    with pytest.raises(ValueError, match="must be unique"):
        ClusterVocabulary(("a", "b", "a"), ("x", "y", "z"))
    assert vocab.id_of(" " + vocab.names[7] + "\n") == 7 and vocab.id_of("no-such-cluster") is None


def test_prompts_show_names_and_keywords(vocab):
    p = PromptFormat("plain", 2).prompt(vocab, (0, 5))
    assert p.startswith("history: ") and p.endswith("\nnext:")
    assert vocab.names[0] in p and vocab.descriptions[5] in p
    with pytest.raises(ValueError, match="chat template"):
        PromptFormat("chat", 2).prompt(vocab, (0, 5), tokenizer=None)
    with pytest.raises(ValueError, match="style='json'"):
        PromptFormat("json", 2)


def test_catalog_tokenizer_expresses_every_name(vocab):
    tok = build_cluster_tokenizer(vocab, 1024, tokenizer_texts(vocab))
    fmt = PromptFormat("plain", 2)
    longest = check_expressible(tok, vocab, fmt)
    assert 2 <= longest <= 20
    assert tok.decode(tok(fmt.answer(vocab.names[3]))["input_ids"]).strip() == vocab.names[3]


def test_a_tokenizer_that_cannot_write_a_name_is_refused(vocab):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"[UNK]": 0, "</s>": 1, "drama": 2}
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>")
    with pytest.raises(ValueError, match=r"cannot express \d+ cluster name"):
        check_expressible(hf, vocab, PromptFormat("plain", 2))


def test_collate_masks_everything_but_the_answer():
    ids, mask, labels = collate([([5, 6, 7], [8, 1]), ([5], [9, 9, 1])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 1], [5, 9, 9, 1, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, -100, 8, 1], [-100, 9, 9, 1, -100]]


def test_key_sets(ml_catalog):
    k, m = ml_catalog.history_k, ml_catalog.n_clusters
    observed = build_key_set(ml_catalog.histories, k, m, "observed")
    assert observed.num_rows == ml_catalog.manifest["coverage"]["distinct_keys"]
    assert build_key_set(ml_catalog.histories, k, m, "all").num_rows == m**k
    members = build_key_set(ml_catalog.histories, k, m, "members")
    assert members["member_id"].null_count == 0 and members.num_rows >= observed.num_rows
    with pytest.raises(ValueError, match="keys='some'"):
        build_key_set(ml_catalog.histories, k, m, "some")


def test_bad_key_rows_are_quarantined_and_counted():
    t = pa.table({"history_key": [[1, 2], [1], [1, 77], None, [3, 4]], "member_id": [10, 11, 12, 13, None]})
    good, bad = check_key_rows(t, 2, 48, source="keys.parquet")
    assert good["history_key"].to_pylist() == [[1, 2], [3, 4]] and good["member_id"].to_pylist() == [10, None]
    assert bad.num_rows == 3 and bad["member_id"].to_pylist() == [11, 12, 13]
    assert "K=2" in bad["reason"][0].as_py() and "unknown cluster" in bad["reason"][1].as_py()
    with pytest.raises(ValueError, match="no 'history_key' column"):
        check_key_rows(pa.table({"key": [[1, 2]]}), 2, 48, source="keys.parquet")
    with pytest.raises(
        ValueError, match=r"column 'history_key' is list<item: double>; it must be a list of integer"
    ):
        check_key_rows(pa.table({"history_key": [[1.5, 2.0]]}), 2, 48, source="keys.parquet")
    with pytest.raises(ValueError, match=r"column 'member_id' is string"):
        check_key_rows(pa.table({"history_key": [[1, 2]], "member_id": ["a"]}), 2, 48, source="keys.parquet")


def test_model_folders_are_checked(tmp_path):
    with pytest.raises(ValueError, match="not a preset"):
        check_causal_lm_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        check_causal_lm_folder(tmp_path)
    from transformers import BertConfig

    BertConfig(architectures=["BertForSequenceClassification"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not a causal LM"):
        check_causal_lm_folder(tmp_path)
    with pytest.raises(ValueError, match="not a novelty model folder"):
        read_model_info(tmp_path)
    (tmp_path / "novelty.json").write_text(json.dumps({"prompt_format": {"style": "plain", "k": 2}}))
    with pytest.raises(ValueError, match="corrupt"):
        read_model_info(tmp_path)


def _legacy_novelty_json(vocab: ClusterVocabulary, version: int = 1) -> dict:
    """novelty.json as the trainer wrote it before the typed info: no base, method or lora keys, the
    config's LoRA fields flat."""
    return {
        "format_version": version,
        "prompt_format": {"style": "chat", "k": 2},
        "clusters": {"names": list(vocab.names), "descriptions": list(vocab.descriptions),
                     "signature": vocab.signature()},
        "sft_config": {"base": "smollm2-135m", "epochs": 3.0, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "example_config": {"k": 2},
        "report": {"method": "lora", "steps": 2},
    }  # fmt: skip


def test_novelty_info_reads_old_files_round_trips_and_refuses_newer_ones(tmp_path):
    vocab = ClusterVocabulary(("a", "b", "c"), ("x", "y", "z"))
    (tmp_path / "novelty.json").write_text(json.dumps(_legacy_novelty_json(vocab)))
    info = read_model_info(tmp_path)
    assert isinstance(info, NoveltyModelInfo) and info.vocab.signature() == vocab.signature()
    assert (info.base, info.method, info.prompt_format) == ("smollm2-135m", "lora", PromptFormat("chat", 2))
    assert info.lora == LoraSettings(r=4, alpha=8, dropout=0.0) and info.report["steps"] == 2
    config = SFTConfig.from_dict(info.config)  # the flat lora_* fields land in the nested settings
    assert config.lora == info.lora and config.base == "smollm2-135m"

    info.with_report({"steps": 3}).write(tmp_path)
    again = read_model_info(tmp_path)
    assert again == info.with_report({"steps": 3})
    saved = json.loads((tmp_path / "novelty.json").read_text())
    assert saved["clusters"]["signature"] == vocab.signature() and saved["sft_config"] == info.config
    assert saved["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0} and saved["format_version"] == 1

    (tmp_path / "novelty.json").write_text(json.dumps(_legacy_novelty_json(vocab, version=2)))
    with pytest.raises(ValueError, match=r"novelty.json: format_version=2 is newer .* jobs.train_novelty"):
        read_model_info(tmp_path)
    bad = _legacy_novelty_json(vocab)
    bad["clusters"]["signature"] = "0" * 16
    (tmp_path / "novelty.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"novelty.json: corrupt .*signature.*retrain the novelty model"):
        read_model_info(tmp_path)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"r": 0}, "LoraSettings.r=0"),
        ({"alpha": 0}, "LoraSettings.alpha=0"),
        ({"dropout": 1.0}, "dropout=1.0"),
    ],
)
def test_lora_settings_are_checked_and_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LoraSettings(**kwargs)
    with pytest.raises(ValueError, match=field):
        SFTConfig(lora=kwargs)
    assert LoraSettings.from_dict(LoraSettings(r=8).to_dict()) == LoraSettings(r=8, alpha=32, dropout=0.05)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['rank'\]"):
        LoraSettings.from_dict({"rank": 8})
    with pytest.raises(ValueError, match=r"SFTConfig: unknown field\(s\) \['lora_rank'\]"):
        SFTConfig.from_dict({"lora_rank": 8})


@pytest.mark.parametrize("package", ["explore", "alignment"])
def test_import_loads_no_model_libraries(package):
    import subprocess
    import sys

    code = f"import sys, {package}; print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("config", ["SFTConfig", "AlignmentConfig"])
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"epochs": 0, "max_steps": 0}, ": epochs=0, max_steps=0; set one of them > 0."),
        ({"batch_size": 0}, ".batch_size=0: must be >= 1."),
        ({"lr": -1.0}, ".lr=-1.0: must be >= 0"),
        ({"warmup_fraction": 1.0}, ".warmup_fraction=1.0: must be in [0, 1)."),
        ({"lora": {"r": 0}}, "LoraSettings.r=0"),
    ],
)
def test_both_llm_trainer_configs_check_their_shared_fields_alike(config, fields, message):
    from alignment.train import AlignmentConfig
    from explore.sft import SFTConfig

    cls = {"SFTConfig": SFTConfig, "AlignmentConfig": AlignmentConfig}[config]
    expected = message if message.startswith("LoraSettings") else config + message
    with pytest.raises(ValueError) as err:
        cls(**fields)
    assert expected in str(err.value)
    saved = cls.from_dict({"lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "tiny": {"hidden_size": 64}})
    assert saved.lora.r == 4 and saved.tiny.hidden_size == 64


@pytest.mark.parametrize(
    ("keys", "batch", "actors", "expected"),
    [(591, 64, 2, 60), (591, 64, 1, 64), (40, 16, 2, 10), (100, 64, 2, 50), (7, 64, 3, 3), (4, 64, 4, 1)],
)
def test_key_blocks_are_equal_and_a_multiple_of_the_actors(keys, batch, actors, expected):
    """With several sampling actors the driver cuts the keys into equal blocks, as many as a multiple of the
    actors, never over batch_size: no actor is left alone with a last block while the others wait."""
    from explore.pipeline import balanced_batch

    size = balanced_batch(keys, batch, actors)
    assert size == expected and 1 <= size <= batch
    if actors > 1:  # each actor gets the same number of blocks
        assert -(-keys // size) % actors == 0


def test_pipeline_resources_name_a_bad_actor_count():
    from explore.pipeline import Resources

    assert Resources().novelty_actors == 0  # auto
    with pytest.raises(ValueError, match=r"Resources.novelty_actors=-1: must be >= 1, or 0 for auto"):
        Resources(novelty_actors=-1)


def test_a_tally_re_tallied_from_its_stored_samples_is_itself():
    """KeyCandidates keeps its sample log-probabilities rounded; the candidates' mean log-probabilities are
    taken over those rounded values, so `first(n)` of all n samples gives the same entry, never a mean that
    rounds the other way in the fifth decimal (it did: -4.99512 against -4.99513 in a make test run)."""
    import random

    from explore.sampler import tally

    rng = random.Random(0)
    for _ in range(3000):
        samples = [rng.randrange(-1, 8) for _ in range(15)]
        result = tally((0, 1), samples, [-rng.random() * 10 for _ in range(15)])
        assert result.first(15) == result


def test_the_first_n_samples_are_a_smaller_draw_with_the_same_seed():
    from explore.sampler import tally

    samples = [5, 1, -1, 7, 5, 7, 7, 9]  # draw order; 1 is in the history, -1 named no cluster
    logprobs = [-1.0, -0.5, -9.0, -2.0, -1.5, -0.2, -0.4, -3.0]
    full = tally((1, 2), samples, logprobs, seed=3, member_id=4)
    assert (full.candidates, full.counts) == ([7, 5, 9], [3, 2, 1])
    assert (full.n_samples, full.n_in_history, full.n_invalid) == (8, 1, 1)
    four = full.first(4)
    assert four.samples == [5, 1, -1, 7] and (four.candidates, four.counts) == (
        [5, 7],
        [1, 1],
    )  # tie: logprob
    assert (four.n_samples, four.n_in_history, four.n_invalid, four.seed, four.member_id) == (4, 1, 1, 3, 4)
    assert full.first(8) == full
    for n in (0, 9):
        with pytest.raises(ValueError, match=f"n={n}: this key has 8 samples"):
            full.first(n)


def test_the_default_learning_rate_is_lower_with_retrieval():
    """Full training of tiny: 3e-3, but 1e-3 with retrieval (3e-3 degraded the RAG model after 300 steps);
    LoRA 2e-4 either way; an explicit lr wins."""
    assert SFTConfig().learning_rate == 3e-3 and SFTConfig(rag_top=10).learning_rate == 1e-3
    assert SFTConfig(base="smollm2-135m", rag_top=10).learning_rate == 2e-4
    assert SFTConfig(rag_top=10, lr=5e-3).learning_rate == 5e-3


def test_top_names_are_the_most_likely_first_ties_by_cluster_id():
    from explore.sampler import choose_names

    logp = {4: -1.0, 2: -0.5, 9: -1.0, 7: -3.0}
    assert choose_names(logp, 3, "top", 1.5, seed=0) == [2, 4, 9]
    assert choose_names(logp, 10, "top", 1.5, seed=0) == [2, 4, 9, 7]  # fewer names than n: all of them
    with pytest.raises(ValueError, match="decoding='sample': choose_names serves 'top' and 'distinct' only"):
        choose_names(logp, 3, "sample", 1.5, seed=0)


def test_distinct_names_are_draws_without_replacement_at_the_temperature():
    """Gumbel-top-n: the first name is a draw from softmax(log p / T); the second, from the rest renormalised;
    no name twice; the same seed gives the same draw; a low temperature is the top-n."""
    import math
    from collections import Counter

    from explore.sampler import choose_names

    logp = {0: math.log(0.5), 1: math.log(0.3), 2: math.log(0.15), 3: math.log(0.05)}
    draws = [choose_names(logp, 2, "distinct", 1.0, seed=s) for s in range(6000)]
    assert all(len(set(d)) == 2 for d in draws)
    first = Counter(d[0] for d in draws)
    for c, p in ((0, 0.5), (1, 0.3), (2, 0.15), (3, 0.05)):
        assert first[c] / len(draws) == pytest.approx(p, abs=0.02), (c, first)
    # P(second = 1 | first = 0) = 0.3 / 0.5 = 0.6 for a draw without replacement
    after_0 = [d[1] for d in draws if d[0] == 0]
    assert after_0.count(1) / len(after_0) == pytest.approx(0.6, abs=0.03)
    # T = 2 flattens: the first name's share falls to sqrt-weights, 0.5**0.5 / sum(p**0.5)
    flat = Counter(choose_names(logp, 1, "distinct", 2.0, seed=s)[0] for s in range(6000))
    expect = math.sqrt(0.5) / sum(math.sqrt(p) for p in (0.5, 0.3, 0.15, 0.05))
    assert flat[0] / 6000 == pytest.approx(expect, abs=0.02)
    assert choose_names(logp, 4, "distinct", 1.0, seed=7) == choose_names(logp, 4, "distinct", 1.0, seed=7)
    assert choose_names(logp, 3, "distinct", 0.01, seed=7) == choose_names(logp, 3, "top", 1.0, seed=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decoding": "beam"}, "SamplingConfig.decoding='beam': use one of sample, top, distinct"),
        ({"decoding": "top", "top_k": 5}, "top_k=5"),
        ({"decoding": "distinct", "top_p": 0.9}, "top_p=0.9"),
        ({"decoding": "top", "constrained": False}, "constrained=False"),
    ],
)
def test_sampling_config_names_a_decoding_that_cannot_apply(kwargs, message):
    from explore.sampler import SamplingConfig

    with pytest.raises(ValueError, match=re.escape(message)):
        SamplingConfig(**kwargs)


# --- retrieval augmentation (explore.retrieval) -----------------------------------------------------------


def _timed_histories(rows):
    """HISTORIES-like rows (member, clusters); run j of a history starts at unix second 1000 * (j + 1)."""
    return pa.table(
        {
            "member_id": pa.array([m for m, _ in rows], pa.int64()),
            "clusters": pa.array([h for _, h in rows], pa.list_(pa.int32())),
            "timestamps": pa.array(
                [[1000 * (j + 1) for j in range(len(h))] for _, h in rows], pa.list_(pa.int64())
            ),
        }
    )


def test_retrieval_table_counts_backs_off_and_leaves_a_member_out():
    from explore.retrieval import build_table

    rows = [(1, [0, 1, 2]), (2, [0, 1, 2]), (3, [0, 1, 3, 4]), (4, [5, 1, 4])]
    t = build_table(
        k=2, n_clusters=6, catalog_signature="s", histories=_timed_histories(rows), track_members=True
    )
    # transitions: (0,1)->2 x2, (0,1)->3, (1,3)->4, (5,1)->4
    assert t.counts[(0, 1)] == {2: 2, 3: 1} and t.counts[(1,)] == {2: 2, 3: 1, 4: 1}
    assert t.counts[()] == {2: 2, 3: 1, 4: 2} and t.meta["transitions"] == 5 and t.meta["keys"] == 3
    assert t.lookup((0, 1), 2) == [2, 3]
    assert t.lookup((0, 1), 5) == [2, 3, 4]  # back-off to (1,) then overall fills the list; never 0 or 1
    assert t.lookup((2, 5), 3) == [4, 3]  # unseen key and suffix: overall, most frequent first, key excluded
    # member 3's own (0,1)->3 is left out of its list: 3 then comes from (1,) only after 2... and 4 from (1,)
    assert t.lookup((0, 1), 3, member=3) == [2, 4]
    assert t.lookup((0, 1), 3, member=1) == [2, 3, 4]  # member 1 still sees member 2's (0,1)->2
    # a window keeps transitions whose next cluster's run began at or after `since`
    recent = build_table(
        k=2, n_clusters=6, catalog_signature="s", histories=_timed_histories(rows), since=4000
    )
    assert recent.meta["transitions"] == 1 and recent.counts[(1, 3)] == {4: 1}
    with pytest.raises(ValueError, match=r"names a cluster outside the catalog \(0\.\.4\)"):
        build_table(k=2, n_clusters=5, catalog_signature="s", histories=_timed_histories(rows), sources=["h"])


def test_retrieval_from_feedback_counts_engaged_clusters_outside_the_key():
    from explore.retrieval import feedback_transitions

    log = pa.table({
        "history_key": [[0, 1], [0, 1], [0, 1], [0, 1], [2]],
        "cluster_id": [3, 1, 4, 5, 3],
        "member_id": [1, 1, 2, 2, 3],
        "timestamp": [5_000_000, 5_000_000, 5_000_000, 1_000_000, 5_000_000],
        "click": [True, True, False, True, True],
        "like": [False, True, False, False, False],
        "share": [False, False, False, False, False],
    })  # fmt: skip
    # row 2: cluster in the key; row 3: no engagement; row 5: wrong key length
    assert feedback_transitions(log, 2) == [((0, 1), 3, 1), ((0, 1), 5, 2)]
    assert feedback_transitions(log, 2, since=2_000) == [((0, 1), 3, 1)]  # since in s, timestamps in ms


def test_retrieval_files_round_trip_with_a_version_and_refuse_bad_ones(tmp_path):
    import pyarrow.parquet as pq

    from explore.retrieval import RETRIEVAL, RetrievalTable, build_table

    rows = [(1, [0, 1, 2]), (2, [0, 1, 3]), (3, [2, 1, 0])]
    t = build_table(
        k=2, n_clusters=4, catalog_signature="sig", histories=_timed_histories(rows), sources=["x"]
    )
    t.write(tmp_path / "t")
    back = RetrievalTable.read(tmp_path / "t")
    assert back.version == t.version and back.counts == t.counts and back.meta["sources"] == ["x"]
    meta = json.loads((tmp_path / "t" / "retrieval.json").read_text())
    assert meta["version"] == t.version and meta["k"] == 2 and meta["catalog_signature"] == "sig"
    assert not list((tmp_path / "t").glob("*.pkl")) and pq.read_schema(
        tmp_path / "t" / "retrieval.parquet"
    ).equals(RETRIEVAL, check_metadata=False)
    other = build_table(k=2, n_clusters=4, catalog_signature="sig", histories=_timed_histories(rows[:2]))
    assert other.version != t.version  # other counts, another version
    back.check_for(k=2, catalog_signature="sig", source="m")
    with pytest.raises(ValueError, match=r"m: retrieval table has K=2, the model reads K=3"):
        back.check_for(k=3, catalog_signature="sig", source="m")
    with pytest.raises(ValueError, match=r"built on other clusters \(catalog signature sig\)"):
        back.check_for(k=2, catalog_signature="other", source="m")
    # rows from another build than the JSON: refused, not silently read
    other.write(tmp_path / "o")
    (tmp_path / "o" / "retrieval.json").write_text((tmp_path / "t" / "retrieval.json").read_text())
    with pytest.raises(
        ValueError, match=r"does not match the rows .* different builds.*jobs.build_retrieval"
    ):
        RetrievalTable.read(tmp_path / "o")
    with pytest.raises(ValueError, match=r"no retrieval.parquet and no retrieval.json.*jobs.build_retrieval"):
        RetrievalTable.read(tmp_path)


def test_rag_prompts_list_retrieved_names_and_plain_ones_are_unchanged(vocab):
    plain = PromptFormat("plain", 2)
    key = (3, 17)
    assert plain.prompt(vocab, key) == (
        f"history: {vocab.names[3]} ({vocab.descriptions[3]}) | {vocab.names[17]} ({vocab.descriptions[17]})\nnext:"
    )
    assert plain.to_dict() == {"style": "plain", "k": 2}  # what older readers know
    rag = PromptFormat("plain", 2, retrieved=3)
    text = rag.prompt(vocab, key, retrieved=[5, 6, 7, 8])
    assert text.endswith(f"\nrecent: {vocab.names[5]} | {vocab.names[6]} | {vocab.names[7]}\nnext:")
    assert PromptFormat(**rag.to_dict()) == rag
    with pytest.raises(ValueError, match=r"retrieved=3\): give the key's retrieved clusters"):
        rag.prompt(vocab, key)
    with pytest.raises(ValueError, match=r"retrieved=0\) reads no retrieved clusters"):
        plain.prompt(vocab, key, retrieved=[5])
    with pytest.raises(ValueError, match=r"PromptFormat.retrieved=-1"):
        PromptFormat("plain", 2, retrieved=-1)


def test_a_rag_model_and_its_table_must_go_together(tmp_path):
    from explore.retrieval import build_table
    from explore.sampler import resolve_retrieval

    vocab = ClusterVocabulary(("a", "b", "c", "d"), ("w", "x", "y", "z"))
    table = build_table(k=2, n_clusters=4, catalog_signature=vocab.signature(),
                        histories=_timed_histories([(1, [0, 1, 2]), (2, [0, 1, 3])]))  # fmt: skip

    def info(retrieved):
        return NoveltyModelInfo(
            base="tiny", method="full", vocab=vocab, config={"base": "tiny"}, report={},
            prompt_format=PromptFormat("plain", 2, retrieved), example_config={},
            retrieval=table.to_dict(retrieved) if retrieved else None,
        )  # fmt: skip

    rag, plain = info(3), info(0)
    table.write(tmp_path / "rag")
    rag.write(tmp_path / "rag")
    back = read_model_info(tmp_path / "rag")
    assert back == rag and back.rag and back.retrieval["version"] == table.version
    assert resolve_retrieval(tmp_path / "rag", rag, True, None).version == table.version
    with pytest.raises(ValueError, match=r"trained with retrieval augmentation .* sample it with --rag"):
        resolve_retrieval(tmp_path / "rag", rag, False, None)
    with pytest.raises(ValueError, match=r"--rag: novelty model .* trained without retrieval augmentation"):
        resolve_retrieval(tmp_path / "plain", plain, True, None)
    with pytest.raises(ValueError, match=r"--retrieval is given without --rag"):
        resolve_retrieval(tmp_path / "plain", plain, False, tmp_path / "rag")
    assert resolve_retrieval(tmp_path / "plain", plain, False, None) is None
    # a fresher table from another catalog is refused
    foreign = build_table(
        k=2, n_clusters=4, catalog_signature="0" * 16, histories=_timed_histories([(1, [0, 1, 2])])
    )
    foreign.write(tmp_path / "foreign")
    with pytest.raises(ValueError, match=r"built on other clusters"):
        resolve_retrieval(tmp_path / "rag", rag, True, tmp_path / "foreign")
    with pytest.raises(ValueError, match=r"prompt_format.retrieved=3 but retrieval is missing"):
        NoveltyModelInfo(base="tiny", method="full", vocab=vocab, config={}, report={},
                         prompt_format=PromptFormat("plain", 2, 3), example_config={})  # fmt: skip


def test_build_retrieval_job_writes_a_versioned_table_and_checks_the_model(ml_catalog, tmp_path):
    from explore.retrieval import RetrievalTable
    from jobs.build_retrieval import RetrievalFields, build, summary_lines

    ml_catalog.save(tmp_path / "catalog")
    s = build(RetrievalFields(catalog=str(tmp_path / "catalog")), tmp_path / "table")
    table = RetrievalTable.read(tmp_path / "table")
    assert s["version"] == table.version and s["transitions"] > 1000 and table.k == ml_catalog.history_k
    assert json.loads((tmp_path / "table" / "summary.json").read_text())["version"] == table.version
    assert any("retrieval table" in line for line in summary_lines(s))
    again = build(RetrievalFields(catalog=str(tmp_path / "catalog")), tmp_path / "table")
    assert again["version"] == s["version"]  # same logs, same version
    newest = max(max(t) for t in ml_catalog.histories["timestamps"].to_pylist() if t)
    recent = build(
        RetrievalFields(catalog=str(tmp_path / "catalog"), since=newest - 30 * 86_400), tmp_path / "r"
    )
    assert 0 < recent["transitions"] < s["transitions"] and recent["version"] != s["version"]
    with pytest.raises(ValueError, match=r"--no-histories without --logs"):
        build(RetrievalFields(catalog=str(tmp_path / "catalog"), histories=False), tmp_path / "x")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "novelty.json").write_text(
        json.dumps(_legacy_novelty_json(ClusterVocabulary.from_clusters(ml_catalog.clusters)))
    )
    with pytest.raises(ValueError, match=r"--model .*trained without retrieval augmentation"):
        build(
            RetrievalFields(catalog=str(tmp_path / "catalog"), model=str(tmp_path / "plain")), tmp_path / "y"
        )
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError):
        build(RetrievalFields(catalog=str(tmp_path / "catalog")), tmp_path / "busy")
