# stand-in for DeepSpeed's zero_to_torch.py (not copied)
