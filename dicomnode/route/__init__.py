"""Routing: administrator-written YAML rules decide what happens to each completed series or study.

See README "Routing rules" for the language. Public entry points:

* :func:`load_ruleset` / :func:`load_for_config` — validate a rules folder (errors name file, line, rule);
* :class:`RuleBook` / :class:`RuleWatcher` — the set in force, hot reload on change and SIGHUP;
* :class:`Router` — ``on_ready(SeriesReady | StudyReady)``, ``quiet_seconds_for(study, series)``;
* :class:`DecisionLog` / :func:`read_decisions` — the ``route_decisions`` table.
"""

from dicomnode.route.decisions import Decision, DecisionLog, format_decision, read_decisions
from dicomnode.route.evaluate import EvalContext, Explanation
from dicomnode.route.headers import HeaderCache, SeriesView
from dicomnode.route.router import Forward, Router, SubmitJob
from dicomnode.route.ruleset import RuleIssue, RuleSet, RuleSetError, load_for_config, load_ruleset
from dicomnode.route.watcher import RuleBook, RuleWatcher

__all__ = [
    "Decision", "DecisionLog", "EvalContext", "Explanation", "Forward", "HeaderCache", "Router", "RuleBook",
    "RuleIssue", "RuleSet", "RuleSetError", "RuleWatcher", "SeriesView", "SubmitJob", "format_decision",
    "load_for_config", "load_ruleset", "read_decisions",
]
