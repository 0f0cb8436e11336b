# stand-in for DeepSpeed's zero_to_fp32.py (not copied)
