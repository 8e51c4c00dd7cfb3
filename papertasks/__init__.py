"""papertasks: tag paper abstracts with tasks/categories (multi-label), served as a small CPU model."""
