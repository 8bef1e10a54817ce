"""Every top-level module works when it is the first thing a program imports, from the
repository root, where our triton/ folder (deployment scripts) would otherwise be taken
for the Triton compiler library by torch."""

import subprocess
import sys

import pytest

from conftest import REPO

TINY = ("BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, "
        "num_attention_heads=4, intermediate_size=37)")
# module -> a statement that uses it (torch imported after the module, as a user would).
FIRST_USE = {
    "optimization": "p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.ones(2); "
                    "o = optimization.LAMB([p], lr=0.1); o.step(); assert p[0] < 1",
    "model": f"m = model.BertForPreTraining(model.{TINY}); "
             "m(torch.ones(2, 5, dtype=torch.long))[0].sum().backward()",
    "tokenization": "assert tokenization.BasicTokenizer().tokenize('Hi, you') == "
                    "['hi', ',', 'you']",
    "utils": "assert utils.whole_number('3.0') == 3",
    "pretraining_data": "import numpy as np; labels = pretraining_data.masked_lm_labels("
                        "np.zeros((1, 4), np.int64), np.array([[2, 0]]), np.array([[7, 0]])); "
                        "assert labels.tolist() == [[-1, -1, 7, -1]]",
    "squad": "e = squad.example_from_text('Who?', 'Ann wrote it.'); "
             "assert e.doc_tokens == ['Ann', 'wrote', 'it.']",
    "glue": "assert 'mrpc' in glue.PROCESSORS",
    "finetuning": "import argparse; finetuning.add_finetuning_args(argparse.ArgumentParser(), "
                  "5e-5, 2.0, 32)",
    "create_pretraining_data": "create_pretraining_data.parse_args(['--input_file', 'a', "
                               "'--output_file', 'b', '--vocab_file', 'c'])",
    "run_pretraining": "run_pretraining.parse_args(['--input_dir', 'a', '--config_file', 'b', "
                       "'--output_dir', 'c'])",
    "run_squad": "run_squad.parse_args(['--output_dir', 'a', '--vocab_file', 'b', "
                 "'--config_file', 'c'])",
    "run_glue": "run_glue.parse_args(['--task_name', 'mrpc', '--output_dir', 'a', "
                "'--vocab_file', 'b', '--config_file', 'c', '--data_dir', 'd'])",
    "inference": "inference.parse_args(['--init_checkpoint', 'a', '--vocab_file', 'b', "
                 "'--config_file', 'c', '--question', 'q', '--context', 'c'])",
}


@pytest.mark.parametrize("module", sorted(FIRST_USE))
def test_module_works_when_imported_first(module):
    code = f"import {module}, torch\n{FIRST_USE[module]}"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
