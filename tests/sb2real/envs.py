"""Tiny environments for the genuine-fixture generator (Python 3.7, gym 0.14)."""

import gym
import numpy as np
from gym import spaces


class TinyImageEnv(gym.Env):
    """36x36x3 uint8 observations (the smallest that nature_cnn accepts), 3 discrete actions."""

    metadata = {"render.modes": []}

    def __init__(self):
        self.observation_space = spaces.Box(low=0, high=255, shape=(36, 36, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(3)
        self.rng = np.random.RandomState(0)
        self.t = 0

    def seed(self, seed=None):
        self.rng = np.random.RandomState(seed)
        return [seed]

    def _obs(self):
        return self.rng.randint(0, 256, size=(36, 36, 3)).astype(np.uint8)

    def reset(self):
        self.t = 0
        return self._obs()

    def step(self, action):
        self.t += 1
        return self._obs(), float(action == 1), self.t >= 8, {}


def make_env(name):
    if name == "TinyImage":
        return TinyImageEnv()
    if name.startswith("BitFlipping"):
        from stable_baselines.common.bit_flipping_env import BitFlippingEnv

        return BitFlippingEnv(n_bits=4, continuous=name.endswith("Continuous"), max_steps=4)
    return gym.make(name)
