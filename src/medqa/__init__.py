"""medqa: fine-tune and serve a BERT-family extractive QA model for clinical AMD questions.

Research use only; not medical advice.
"""

__version__ = "0.1.0"
