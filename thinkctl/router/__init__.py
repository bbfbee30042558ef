"""Route each query to a fusion weight λ by its predicted difficulty, or spend a mean thinking-token budget.

``fit_router`` calibrates a :class:`Router` from a λ sweep; ``Router.load``/``save`` read and write its
policy file; ``router.route(question, level=…, entropy=…)`` returns a λ; ``allocate_budget`` spreads a
mean token budget over queries; ``evaluate_routing`` compares routing with every fixed λ on held-out
queries by looking outcomes up in a sweep.
"""

from thinkctl.router.budget import BudgetAllocation, allocate_budget, efficient_hull
from thinkctl.router.evaluate import RouteEvaluation, default_budgets, evaluate_routing, fixed_frontier_accuracy
from thinkctl.router.features import FEATURE_NAMES, prompt_entropy, query_features, text_features
from thinkctl.router.policy import BinsEstimator, LogisticEstimator, Router, fit_logistic, fit_ridge, fit_router, sweep_table

__all__ = ["BinsEstimator", "BudgetAllocation", "FEATURE_NAMES", "LogisticEstimator", "RouteEvaluation", "Router",
           "allocate_budget", "default_budgets", "efficient_hull", "evaluate_routing", "fit_logistic", "fit_ridge", "fit_router",
           "fixed_frontier_accuracy", "prompt_entropy", "query_features", "sweep_table", "text_features"]
