"""bench/time_to_accuracy.py's parts on a tiny config: the held-out evaluation against the
model's own loss, the report's arithmetic, the output files, and the premise of the
comparison: ours and transformers' Trainer take the same steps."""

import json
import sys

import pytest
import torch

from conftest import REPO, sample_documents, write_pretraining_inputs, write_vocab

sys.path.insert(0, str(REPO / "bench"))
import time_to_accuracy as tta  # noqa: E402
from model import BertConfig, BertForPreTraining  # noqa: E402
from pretraining_data import read_shard, to_batch  # noqa: E402

SEQ, PREDICTIONS = 48, 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tta")
    _, config = write_pretraining_inputs(folder, {"hdf5": (SEQ, PREDICTIONS)})
    return folder, config


def test_evaluation_counts_every_masked_token(tiny, tmp_path):
    folder, config = tiny
    shard = sorted((folder / "hdf5").glob("*.hdf5"))[0]
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_json_file(config)).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pt")
    result = tta.evaluate(tmp_path / "ckpt.pt", config, shard, batch_size=7)

    batch = to_batch(read_shard(shard))
    with torch.no_grad():
        _, masked_lm_loss, _ = model(**batch)  # the mean over every masked token
        scores, nsp_scores = model(batch["input_ids"], batch["token_type_ids"],
                                   batch["attention_mask"])
    labels = batch["masked_lm_labels"]
    right = sum(int(scores[row, column].argmax() == labels[row, column])
                for row, column in (labels >= 0).nonzero().tolist())
    assert result["masked_tokens"] == int((labels >= 0).sum())
    assert result["mlm_accuracy"] == right / result["masked_tokens"]
    assert result["mlm_loss"] == pytest.approx(float(masked_lm_loss), rel=1e-5)
    nsp = (nsp_scores.argmax(-1) == batch["next_sentence_labels"]).float().mean()
    assert result["nsp_accuracy"] == pytest.approx(float(nsp))


RESULTS = {"budget_seconds": 1800, "runs": {
    "ours": {"curve": [[300, 100, 0.10, 6.0], [900, 300, 0.20, 5.0], [1800, 600, 0.31, 4.0]],
             "sequences_per_second": 40.0},
    "transformers": {"curve": [[600, 50, 0.08, 6.5], [1800, 150, 0.20, 5.1]],
                     "sequences_per_second": 12.0}}}


def test_report_reads_accuracy_at_each_time_and_the_time_to_the_peers_accuracy():
    table = tta.report(RESULTS)
    assert "| ours | 0.1000 | 0.1000 | 0.2000 | 0.3100 | 600 | 40.0 |" in table
    assert "| transformers | - | 0.0800 | 0.0800 | 0.2000 | 150 | 12.0 |" in table
    assert "in 900 s: time-to-accuracy ratio 2.00x" in table


def test_outputs_are_written_in_the_documented_shape(tmp_path):
    tta.write_outputs(RESULTS, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == RESULTS
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0] == "run,train_seconds,step,held_out_mlm_accuracy,held_out_mlm_loss"
    assert rows[1:] == ["ours,300,100,0.1,6.0", "ours,900,300,0.2,5.0", "ours,1800,600,0.31,4.0",
                        "transformers,600,50,0.08,6.5", "transformers,1800,150,0.2,5.1"]
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("nsp", ["--nsp", "--no-nsp"])
def test_ours_and_trainer_take_the_same_steps(tmp_path, monkeypatch, nsp):
    """--equal_steps on a tiny model: fp32, dropout off, the same data, weights, LAMB and
    schedule give the same per-step losses (to float rounding), with the next-sentence
    loss and without it (the peer is then transformers' BertForMaskedLM)."""
    pytest.importorskip("accelerate")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(sample_documents(6, lines_per_document=40), encoding="utf-8")
    vocab = write_vocab(tmp_path / "vocab.txt", corpus.read_text())
    monkeypatch.setattr(tta, "MODEL", {"hidden_size": 32, "num_hidden_layers": 2,
                                       "num_attention_heads": 4, "intermediate_size": 37,
                                       "max_position_embeddings": 64})
    monkeypatch.setattr(tta, "SEQ", SEQ)
    monkeypatch.setattr(tta, "PREDICTIONS", PREDICTIONS)
    difference = tta.main(tta.parse_args([
        "--corpus", str(corpus), "--vocab_file", str(vocab), "--held_out_documents", "1",
        "--dupe_factor", "2", "--batch_size", "8", "--equal_steps", "4", nsp,
        "--output_dir", str(tmp_path / "out")]))
    assert difference < 1e-4


def test_transfer_fine_tunes_from_the_checkpoint_and_from_random_weights(tmp_path, monkeypatch):
    """The SST-2 step on a tiny config and a tiny SST-2: the seeded subset, one run_glue.py
    run per start and fine-tuning rate, each run's dev accuracy in transfer.json."""
    sst2 = tmp_path / "SST-2"
    sst2.mkdir()
    words = ["good", "bad", "fine", "awful", "great", "dull"]
    rows = [f"{words[i % 6]} film {i}\t{int(words[i % 6] in ('good', 'fine', 'great'))}"
            for i in range(40)]
    (sst2 / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (sst2 / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:10]) + "\n")
    vocab = write_vocab(tmp_path / "vocab.txt", "\n".join(rows * 2))
    monkeypatch.setattr(tta, "SST2", sst2)
    monkeypatch.setattr(tta, "TRANSFER", {**tta.TRANSFER, "examples": 16, "max_seq_length": 16,
                                          "batch_size": 8})
    monkeypatch.setattr(tta, "MODEL", {"hidden_size": 32, "num_hidden_layers": 2,
                                       "num_attention_heads": 4, "intermediate_size": 37,
                                       "max_position_embeddings": 64})
    args = tta.parse_args(["--vocab_file", str(vocab), "--output_dir", str(tmp_path / "out"),
                           "--transfer_learning_rate", "1e-4", "1e-3", "--transfer_seeds", "2",
                           "--seed", "7"])
    folder = tmp_path / "out"
    folder.mkdir()
    config = tta.write_config(args, folder, 0.0)
    checkpoint = tta.initial_weights(config, 0, folder / "weights.pt")
    result = tta.transfer(args, folder, config, checkpoint)

    subsets = [(folder / f"sst2_data_seed{seed}" / "train.tsv").read_text().splitlines()
               for seed in (7, 8)]
    for chosen in subsets:
        assert chosen[0] == "sentence\tlabel" and len(chosen) == 17
        assert set(chosen[1:]) <= set(rows)
    assert subsets[0] != subsets[1]  # each seed its own subset
    written = json.loads((folder / "transfer.json").read_text())
    assert written == result
    assert [(run["start"], run["learning_rate"], run["seed"]) for run in written["runs"]] == [
        (start, rate, seed) for rate in (1e-4, 1e-3) for seed in (7, 8)
        for start in ("pre-trained", "random init")]
    for run in written["runs"]:
        output = folder / (f"sst2_{run['start'].replace(' ', '_')}_lr{run['learning_rate']:g}"
                           f"_seed{run['seed']}")
        assert run["dev_accuracy"] == json.loads((output / "eval_results.json").read_text())["acc"]
        assert f'"seed": {run["seed"]},' in (output / "dllogger.json").read_text()


def test_the_transfer_table_averages_seeds_and_compares_each_start_at_its_best_rate():
    runs = [{"start": start, "learning_rate": rate, "seed": seed, "dev_accuracy": accuracy}
            for start, rate, seed, accuracy in [
                ("pre-trained", 1e-4, 1, 0.70), ("random init", 1e-4, 1, 0.74),
                ("pre-trained", 1e-4, 2, 0.72), ("random init", 1e-4, 2, 0.76),
                ("pre-trained", 3e-4, 1, 0.78), ("random init", 3e-4, 1, 0.70),
                ("pre-trained", 3e-4, 2, 0.80), ("random init", 3e-4, 2, 0.72)]]
    table = tta.transfer_table({"checkpoint": "ckpt_9.pt", **tta.TRANSFER, "runs": runs})
    assert "| 0.0001 | 0.7100 [0.7000, 0.7200] | 0.7500 [0.7400, 0.7600] | -4.0 |" in table
    assert "| 0.0003 | 0.7900 [0.7800, 0.8000] | 0.7100 [0.7000, 0.7200] | +8.0 |" in table
    assert table.endswith("each start at its best rate: pre-trained 0.7900 (lr 0.0003), "
                          "random init 0.7500 (lr 0.0001): +4.0 points")


def test_a_learnt_vocabulary_comes_from_the_training_documents_only(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a cat sat.\nthe cat ate.\n\nthe hat sat.\n\nzebra quiz jinx.\n")
    folder = tmp_path / "out"
    folder.mkdir()
    args = tta.parse_args(["--corpus", str(corpus), "--held_out_documents", "1",
                           "--vocab_size", "30", "--output_dir", str(folder)])
    vocab_file = tta.choose_vocab(args, folder, tta.split_corpus(args, folder))
    vocab = vocab_file.read_text().splitlines()
    assert vocab_file == folder / "vocab_30.txt" and vocab[0] == "[PAD]"
    assert {"cat", "sat", "the"} <= set(vocab)
    assert not {"z", "q", "j", "x"} & set(vocab)  # letters of the held-out document only
    args.vocab_file = vocab_file
    config = json.loads(tta.write_config(args, folder, 0.0).read_text())
    assert config["vocab_size"] == len(vocab)
    with pytest.raises(SystemExit):
        tta.parse_args(["--vocab_file", "v.txt", "--vocab_size", "30"])


def test_model_size_flags_shape_the_written_config(tmp_path):
    """--hidden_size keeps heads of 64 and a feed-forward 4x as wide; unset, the recipe's."""
    vocab = write_vocab(tmp_path / "vocab.txt", sample_documents(2))
    args = tta.parse_args(["--vocab_file", str(vocab), "--hidden_size", "512",
                           "--num_hidden_layers", "2"])
    config = BertConfig.from_json_file(tta.write_config(args, tmp_path, 0.1))
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size,
            config.num_hidden_layers) == (512, 8, 2048, 2)
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.1
    default = tta.model_shape(tta.parse_args([]))
    assert default == tta.MODEL and default is not tta.MODEL


def test_a_width_not_in_heads_of_64_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        tta.parse_args(["--hidden_size", "200"])
    assert "--hidden_size 200: a positive multiple of 64" in capsys.readouterr().err


def test_a_higher_masking_rate_masks_the_training_shards_only(tmp_path, monkeypatch):
    """--masked_lm_prob 0.3: training shards with room for 30% of each row, masked at that
    rate, and run_pretraining.py told the rate; the held-out shard keeps 15% so accuracies
    compare across rates."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(sample_documents(6, lines_per_document=40), encoding="utf-8")
    vocab = write_vocab(tmp_path / "vocab.txt", corpus.read_text())
    monkeypatch.setattr(tta, "SEQ", SEQ)
    monkeypatch.setattr(tta, "PREDICTIONS", PREDICTIONS)
    folder = tmp_path / "out"
    folder.mkdir()
    args = tta.parse_args(["--corpus", str(corpus), "--vocab_file", str(vocab),
                           "--held_out_documents", "1", "--dupe_factor", "1",
                           "--masked_lm_prob", "0.3", "--output_dir", str(folder)])
    train, held_out = tta.prepare_data(args, folder, tta.split_corpus(args, folder))

    def masked_share(shard):
        arrays = read_shard(shard)
        masked = arrays["masked_lm_positions"] > 0  # padding is 0, [CLS]'s never-masked place
        return masked.shape[1], masked.sum() / arrays["input_mask"].sum()

    width, share = masked_share(next(train.glob("*.hdf5")))
    assert width == 15 and 0.28 < share < 0.31  # ceil(48 x 0.3)
    width, share = masked_share(held_out)
    assert width == PREDICTIONS and 0.12 < share < 0.16
    arguments = tta.pretraining_arguments(args, train, "c.json", "w.pt", folder, 10, 5, "fp32")
    assert arguments[arguments.index("--masked_lm_prob") + 1] == "0.3"
    assert arguments[arguments.index("--max_predictions_per_seq") + 1] == "15"
    with pytest.raises(SystemExit):
        tta.parse_args(["--masked_lm_prob", "0.8"])
