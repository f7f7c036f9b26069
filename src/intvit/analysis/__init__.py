"""Analysis of the approximations against float: errors, costs, plots, tables."""
