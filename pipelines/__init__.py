"""Entry points: `python -m pipelines.<name> --help`."""
import warnings

# google-api-core (a Beam GCP dependency) warns on every import that Python 3.11 support ends in
# 2027; it says nothing about this project and buries each entry point's own output.
warnings.filterwarnings("ignore", message="You are using a Python version", category=FutureWarning)
