"""The offline safety benchmark: deterministic datasets (`bds bench build-data`), the runs of
every method at every harmful share (`bds_core.bench.run`, `bds bench run`) and their report
(`bds_core.bench.report`, `bds bench report`). See docs/benchmarks.md."""

from bds_core.bench.build import (
    DEFAULT_SHARES,
    DEFAULT_TASKS,
    BuildDataConfig,
    BuildDataError,
    BuildDataResult,
    build_benchmark_data,
    ft_file_name,
)
from bds_core.bench.prompts import (
    HarmfulPrompt,
    PromptSplit,
    load_strongreject,
    split_prompts,
    stratified_allocation,
)
from bds_core.bench.refusals import REFUSAL_TEMPLATES, build_safety_examples
from bds_core.bench.tasks import TASKS, BenignTask, TaskItem, get_task, number_to_words

__all__ = [
    "DEFAULT_SHARES",
    "DEFAULT_TASKS",
    "REFUSAL_TEMPLATES",
    "TASKS",
    "BenignTask",
    "BuildDataConfig",
    "BuildDataError",
    "BuildDataResult",
    "HarmfulPrompt",
    "PromptSplit",
    "TaskItem",
    "build_benchmark_data",
    "build_safety_examples",
    "ft_file_name",
    "get_task",
    "load_strongreject",
    "number_to_words",
    "split_prompts",
    "stratified_allocation",
]
