"""The ShapesWorld reproduction of the DenseDPO paper's findings (see README.md here)."""
