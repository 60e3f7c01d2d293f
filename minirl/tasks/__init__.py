"""Toy tasks with exact verifiers, their character tokenizer, corpora and benchmark.

    tokenizer.py  CharTokenizer: one id per character, pad=0, bos=1, eos=2
    base.py       Example, the Task interface, partial-credit helpers
    tasks.py      add, sort, reverse, copy, max, count (TASKS); sub, unseen by the shipped models (UNSEEN_TASKS)
    formats.py    raw pretraining lines "347+85=432", chat prompts "Q:347+85\\nA:"
    corpus.py     pretrain_batch, sft_batch, prompt_batch
    heldout.py    heldout_set, heldout_accuracy
"""

from .base import Example, Task
from .heldout import heldout_accuracy, heldout_set
from .corpus import pad_right, pretrain_batch, prompt_batch, sample_examples, sft_batch
from .formats import MAX_SEQ_LEN, encode_chat, format_pretrain, format_prompt, format_raw_prompt, max_seq_len
from .tasks import (TASKS, UNSEEN_TASKS, AddTask, CopyTask, CountTask, MaxTask, ReverseTask, SortTask, StringTask,
                    SubTask, get_task, resolve_task)
from .tokenizer import ALPHABET, CharTokenizer

__all__ = [
    "ALPHABET", "AddTask", "CharTokenizer", "CopyTask", "CountTask", "Example", "MAX_SEQ_LEN", "MaxTask",
    "ReverseTask", "SortTask", "StringTask", "SubTask", "TASKS", "Task", "UNSEEN_TASKS", "encode_chat",
    "format_pretrain", "format_prompt", "format_raw_prompt", "get_task", "heldout_accuracy", "heldout_set",
    "max_seq_len", "pad_right", "pretrain_batch", "prompt_batch", "resolve_task", "sample_examples", "sft_batch",
]
