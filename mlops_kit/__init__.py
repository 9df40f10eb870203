"""mlops_kit: the ML lifecycle as one parameterized notebook per stage.

This module imports nothing heavy: the model server in the image imports
``mlops_kit.serving`` without the notebook and pipeline machinery.
"""

__version__ = "0.1.0"
