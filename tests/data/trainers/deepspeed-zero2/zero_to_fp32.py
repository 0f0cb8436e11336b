# stand-in for DeepSpeed's utils/zero_to_fp32.py (not copied)
