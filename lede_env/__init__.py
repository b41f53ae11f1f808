"""LEDE gym: self-speculative decoding on a real Llama model as a Gymnasium RL problem."""

__version__ = "0.1.0"
