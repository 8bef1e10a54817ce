"""Fine-tunes and evaluates BERT on a GLUE task (MRPC, SST-2, CoLA, MNLI, QNLI, QQP, RTE,
STS-B, WNLI).

    python run_glue.py --task_name mrpc --data_dir data/glue/MRPC --do_train --do_eval \\
        --init_checkpoint results/checkpoints/ckpt_8601.pt --config_file bert_configs/large.json \\
        --vocab_file vocab.txt --output_dir results/MRPC --bf16
    torchrun --nproc_per_node=8 run_glue.py ...          # several GPUs

Outputs in --output_dir: eval_results.json (metrics and timings), predictions.json
({guid: label} for --do_predict on test.tsv, and dev_predictions.json for --do_eval),
pytorch_model.bin + config.json after training, dllogger.json.

Deliberate deviations from NVIDIA's run_glue.py: see finetuning.py (optimizer, clipping,
batch sizes) and glue.py (all nine tasks, metrics without sklearn). Evaluation runs on rank 0
only, as NVIDIA's; --eval_batch_size defaults to 64 rather than 8. --do_predict labels the
test set (NVIDIA's labels the dev set again, which --do_eval already does here), for a GLUE
submission; metrics go to eval_results.json (JSON), not NVIDIA's results.txt. --output_dir
and every file the chosen modes read (train.tsv, the dev and test files) are checked before
any work: they are all read before training.
"""

import argparse

import torch

import finetuning
import glue
import utils
from model import BertForSequenceClassification


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--task_name", required=True, type=str.lower,
                        help=f"one of {', '.join(sorted(glue.PROCESSORS))}")
    parser.add_argument("--data_dir", required=True, help="folder with the task's TSV files")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--do_train", action="store_true", help="fine-tune on train.tsv")
    parser.add_argument("--do_eval", action="store_true", help="score the dev set")
    parser.add_argument("--do_predict", action="store_true",
                        help="label test.tsv (--do_eval labels and scores the dev set)")
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--server_ip", help="accepted for compatibility (NVIDIA's remote "
                                            "debugger; not attached here)")
    parser.add_argument("--server_port", help="accepted for compatibility")
    finetuning.add_finetuning_args(parser, learning_rate=5e-5, epochs=3.0, batch_size=32)
    parser.set_defaults(seed=1)  # NVIDIA's run_glue.py default (run_squad.py's is 42)
    return parser.parse_args(argv)


def read_examples(processor, args):
    """The examples of every split the chosen modes need (train.tsv, the dev and the test
    file), read before any work: a missing or malformed dev file found after training
    would lose the run."""
    readers = {"train": (args.do_train, processor.get_train_examples),
               "dev": (args.do_eval, processor.get_dev_examples),
               "test": (args.do_predict, processor.get_test_examples)}
    return {split: read(args.data_dir) for split, (wanted, read) in readers.items() if wanted}


def match_label_order(model, checkpoint_labels, labels):
    """Puts the classifier's rows in the task's label order where the checkpoint names
    the same labels in another order: transformers' MNLI models order entailment, neutral,
    contradiction, glue.py (as NVIDIA's) contradiction, entailment, neutral. Other names
    (LABEL_0, ..., or words for SST-2's 0 and 1) say nothing about the order: kept."""
    if not checkpoint_labels or len(checkpoint_labels) != len(labels):
        return
    named = [name.lower() for name in checkpoint_labels]
    wanted = [label.lower() for label in labels]
    if sorted(named) != sorted(wanted) or named == wanted:
        return
    rows = [named.index(label) for label in wanted]
    with torch.no_grad():
        for tensor in (model.classifier.weight, model.classifier.bias):
            tensor.copy_(tensor[rows])
    utils.logger.info("the checkpoint's classifier rows are %s; reordered to the task's %s",
                      checkpoint_labels, labels)


def features(examples, processor, args, tokenizer):
    return glue.convert_examples_to_features(examples, processor.get_labels(),
                                             args.max_seq_length, tokenizer,
                                             processor.output_mode)


def predicted_labels(logits, processor):
    if processor.output_mode == glue.REGRESSION:
        return logits.squeeze(-1).numpy()
    return logits.argmax(dim=-1).numpy()


def evaluate(model, examples, processor, args, tokenizer, device):
    """Dev-set metrics (and the dev predictions) of the task."""
    tensors = features(examples, processor, args, tokenizer)
    labels = tensors.pop("labels").numpy()
    (logits,), timing = finetuning.predict(model, finetuning.named_dataset(tensors),
                                           args.eval_batch_size, args, device)
    predictions = predicted_labels(logits, processor)
    results = {**glue.compute_metrics(args.task_name, predictions, labels), **timing}
    finetuning.write_json(f"{args.output_dir}/dev_predictions.json",
                          label_names(examples, predictions, processor))
    return results


def label_names(examples, predictions, processor):
    if processor.output_mode == glue.REGRESSION:
        return {e.guid: float(p) for e, p in zip(examples, predictions)}
    labels = processor.get_labels()
    return {e.guid: labels[int(p)] for e, p in zip(examples, predictions)}


def predict_test(model, examples, processor, args, tokenizer, device):
    tensors = features(examples, processor, args, tokenizer)
    tensors.pop("labels")
    (logits,), _ = finetuning.predict(model, finetuning.named_dataset(tensors),
                                      args.eval_batch_size, args, device)
    finetuning.write_json(f"{args.output_dir}/predictions.json",
                          label_names(examples, predicted_labels(logits, processor), processor))


def main(args):
    if not (args.do_train or args.do_eval or args.do_predict):
        raise ValueError("nothing to do: pass at least one of --do_train, --do_eval, --do_predict")
    utils.check_precision_args(args)
    utils.check_writable_dir(args.output_dir, "--output_dir")
    processor = glue.get_processor(args.task_name)
    examples = read_examples(processor, args)
    distributed, tokenizer, metrics = finetuning.start_run(args)
    model = finetuning.load_model(BertForSequenceClassification, args, distributed.device,
                                  will_train=args.do_train, num_labels=processor.num_labels)
    match_label_order(model, finetuning.checkpoint_label_names(args.init_checkpoint),
                      processor.get_labels())

    results = {}
    if args.do_train:
        tensors = features(examples["train"], processor, args, tokenizer)
        results.update(finetuning.train(model, finetuning.named_dataset(tensors), args,
                                        distributed, metrics))
        if distributed.is_main:
            finetuning.save_model(model, args, processor.get_labels())
    # Prediction is rank 0's alone: waiting for it at the group's last barrier, the other
    # ranks would time out (30 minutes) on a long one, and torchrun would stop rank 0 too.
    utils.end_distributed(distributed)
    if distributed.is_main and args.do_eval:
        results.update(evaluate(model, examples["dev"], processor, args, tokenizer,
                                distributed.device))
    if distributed.is_main and args.do_predict:
        predict_test(model, examples["test"], processor, args, tokenizer, distributed.device)
    if distributed.is_main:
        finetuning.write_json(f"{args.output_dir}/eval_results.json", results)
        metrics.log((), finetuning.with_nvidia_summary_names(results))
    metrics.close()
    return results


if __name__ == "__main__":
    utils.run_entry_point(main, parse_args)
