"""Recommenders behind one interface (``base.Recommender``), one small module per algorithm."""
from nightly_topn.models.als import ALS
from nightly_topn.models.base import Recommender, load_model
from nightly_topn.models.popularity import Popularity

MODELS: dict[str, type[Recommender]] = {cls.name: cls for cls in (Popularity, ALS)}

__all__ = ["MODELS", "Recommender", "load_model", "ALS", "Popularity"]
