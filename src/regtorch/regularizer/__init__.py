"""Binding penalties to a model: parameter selection, the Regularizer and its modes, activity penalties."""
