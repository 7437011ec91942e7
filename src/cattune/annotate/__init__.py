"""Automated causal annotation: human-written examples -> an assistant LLM (or a rule) ->
validated ``important`` relations for every item of a dataset.

* :mod:`~cattune.annotate.examples` loads and checks the human-written examples;
  :mod:`~cattune.annotate.prompt` turns them and an item into chat messages.
* :mod:`~cattune.annotate.replies` extracts relations from a reply;
  :mod:`~cattune.annotate.validate` keeps only spans that occur, causes before effects.
* Backends: :mod:`~cattune.annotate.client` (OpenAI-compatible endpoint),
  :mod:`~cattune.annotate.local` (a Hugging Face model in-process), :mod:`~cattune.annotate.rules`
  (``Name: value`` prompts, no model); :mod:`~cattune.annotate.llm` drives the LLM backends.
* :mod:`~cattune.annotate.run` annotates a file concurrently through the resumable
  :mod:`~cattune.annotate.cache`; :mod:`~cattune.annotate.compare` compares two annotations.
"""

from cattune.annotate.backoff import RetryPolicy
from cattune.annotate.cache import AnnotationCache
from cattune.annotate.compare import ComparisonReport, compare_annotations, format_comparison
from cattune.annotate.examples import ExampleSet, load_example_set, shipped_example_sets
from cattune.annotate.llm import AnnotateError, LLMAnnotator
from cattune.annotate.outcome import ItemOutcome
from cattune.annotate.replies import ReplyError, parse_reply
from cattune.annotate.rules import RuleAnnotator
from cattune.annotate.run import AnnotationRun, AnnotationSummary, annotate_file, annotate_records
from cattune.annotate.validate import ValidatedRelations, validate_relations

__all__ = [
    "AnnotateError", "AnnotationCache", "AnnotationRun", "AnnotationSummary", "ComparisonReport", "ExampleSet",
    "ItemOutcome", "LLMAnnotator", "ReplyError", "RetryPolicy", "RuleAnnotator", "annotate_file",
    "annotate_records", "compare_annotations", "format_comparison", "load_example_set", "parse_reply",
    "shipped_example_sets", "validate_relations",
]
