"""Configs of the ShapesWorld paper reproduction."""
