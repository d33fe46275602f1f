"""Evaluation of learned representations (docs/eval.md).

* ``suite``: downstream tasks (VTAB-1k image folders, the synthetic world's tasks, sklearn's
  digits, TFDS) and suite files;
* ``vtab``: the VTAB-1k fine-tuning sweep (VIVI §4, Object-centric §4.2; docs/reference.md, "VTAB-1k");
* ``probe``: linear probe and kNN on frozen features (quick proxies);
* ``transfer``: ``evaluate(checkpoint, suite, out, EvalConfig(...))``, resumable unit by unit;
* ``report``: result tables, ``compare`` (Welch t-test, plots);
* ``robustness``: pm-k accuracy on video (VIVI §5.2, Table 3; docs/reference.md, "Robustness");
* ``objects``: the same-class nearest-neighbour rate of objects + Fisher's exact test
  (Object-centric Table 2; docs/reference.md, "Object metric").
"""
from vivi.eval.objects import compare_object_metric, fisher_test, nearest_neighbour_hits, object_nn_metric
from vivi.eval.report import compare, welch_test
from vivi.eval.robustness import pm_k_accuracy, robustness_from_task, video_robustness
from vivi.eval.suite import Task, load_split, load_suite
from vivi.eval.transfer import PROTOCOLS, EvalConfig, evaluate, load_eval_encoder

__all__ = ["EvalConfig", "PROTOCOLS", "Task", "compare", "compare_object_metric", "evaluate", "fisher_test",
           "load_eval_encoder", "load_split", "load_suite", "nearest_neighbour_hits", "object_nn_metric",
           "pm_k_accuracy", "robustness_from_task", "video_robustness", "welch_test"]
