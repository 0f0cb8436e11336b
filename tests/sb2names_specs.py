"""The model variants sb2names_probe.py builds (prints them as JSON)."""

import json

S = []


def add(id, algo, policy="MlpPolicy", env="CartPole-v1", pk=None, kw=None, n_envs=None):
    d = {"id": id, "algo": algo, "policy": policy, "env": env}
    if pk is not None:
        d["pk"] = pk
    if kw:
        d["kw"] = kw
    if n_envs:
        d["n_envs"] = n_envs
    elif isinstance(env, list):
        d["n_envs"] = 1  # a custom env instance must come in a VecEnv
    S.append(d)


for a in ["PPO2", "A2C", "ACKTR", "ACER", "TRPO", "PPO1"]:
    add(a.lower() + "-mlp-cartpole", a)
for a in ["PPO2", "A2C", "TRPO", "PPO1"]:
    add(a.lower() + "-mlp-pendulum", a, env="Pendulum-v0")
add("ppo2-netarch-split", "PPO2", pk={"net_arch": [{"pi": [32], "vf": [16, 16]}]})
add("ppo2-netarch-shared", "PPO2", env="Pendulum-v0", pk={"net_arch": [32, {"vf": [8]}]})
add("ppo2-netarch-sharedonly", "PPO2", pk={"net_arch": [24, 12]})
add("ppo2-layers", "PPO2", pk={"layers": [16]})
add("ppo2-mlplstm", "PPO2", "MlpLstmPolicy", kw={"nminibatches": 1}, pk={"n_lstm": 16})
add(
    "ppo2-mlplnlstm",
    "PPO2",
    "MlpLnLstmPolicy",
    kw={"nminibatches": 1},
    pk={"n_lstm": 8},
    env="Pendulum-v0",
)
add(
    "ppo2-lstm-netarch",
    "PPO2",
    "MlpLstmPolicy",
    kw={"nminibatches": 1},
    pk={"n_lstm": 8, "net_arch": [10, "lstm", {"pi": [6], "vf": [5, 4]}]},
)
add(
    "ppo2-lstm-layers",
    "PPO2",
    "MlpLstmPolicy",
    kw={"nminibatches": 1},
    pk={"n_lstm": 8, "layers": [12]},
)
add("a2c-mlplstm", "A2C", "MlpLstmPolicy", pk={"n_lstm": 16})
add("acer-mlplstm", "ACER", "MlpLstmPolicy", pk={"n_lstm": 16})
add("acktr-mlplnlstm", "ACKTR", "MlpLnLstmPolicy", pk={"n_lstm": 16})
add("ppo2-cnn", "PPO2", "CnnPolicy", env=["Img"])
add("a2c-cnnlstm", "A2C", "CnnLstmPolicy", env=["Img"], pk={"n_lstm": 16})
add("a2c-cnnlnlstm", "A2C", "CnnLnLstmPolicy", env=["Img"], pk={"n_lstm": 16})
add("trpo-cnn-box", "TRPO", "CnnPolicy", env=["Img", "box"])
add("ppo2-multidiscrete", "PPO2", env=["Vec", "box", "multidiscrete"])
add("ppo2-multibinary", "PPO2", env=["Vec", "discrete", "multibinary"])
add("ppo2-obs-multibinary", "PPO2", env=["Vec", "multibinary", "discrete"])
add("ppo2-obs-multidiscrete", "PPO2", env=["Vec", "multidiscrete", "box"])
add("ppo2-obs-box2d", "PPO2", env=["Vec", "box2d", "discrete"])
add("ppo2-nenvs4", "PPO2", n_envs=4, kw={"nminibatches": 2})
add("dqn-mlp", "DQN")
add("dqn-lnmlp", "DQN", "LnMlpPolicy")
add("dqn-nodueling", "DQN", pk={"dueling": False, "layers": [32]})
add("dqn-paramnoise", "DQN", kw={"param_noise": True})
add("dqn-lnmlp-paramnoise", "DQN", "LnMlpPolicy", kw={"param_noise": True}, pk={"layers": [16]})
add("dqn-cnn", "DQN", "CnnPolicy", env=["Img"])
add("dqn-lncnn-nodueling", "DQN", "LnCnnPolicy", env=["Img"], pk={"dueling": False})
add("dqn-discrete-obs", "DQN", env=["Vec", "discrete", "discrete"])
add("sac-mlp", "SAC", env="Pendulum-v0")
add("sac-lnmlp", "SAC", "LnMlpPolicy", env="Pendulum-v0")
add(
    "sac-layers-fixed-ent",
    "SAC",
    env=["Vec", "box", "box"],
    pk={"layers": [32, 16, 8]},
    kw={"ent_coef": 0.1},
)
add("sac-cnn", "SAC", "CnnPolicy", env=["Img", "box"])
add("ddpg-mlp", "DDPG", env="Pendulum-v0")
add("ddpg-lnmlp", "DDPG", "LnMlpPolicy", env="Pendulum-v0")
add(
    "ddpg-norm",
    "DDPG",
    env=["Vec", "box", "box"],
    kw={"normalize_observations": True, "normalize_returns": True},
    pk={"layers": [16]},
)
add("ddpg-normobs", "DDPG", env="Pendulum-v0", kw={"normalize_observations": True})
add("ddpg-cnn", "DDPG", "CnnPolicy", env=["Img", "box"])
add("gail-mlp-cartpole", "GAIL")
add("gail-mlp-pendulum", "GAIL", env="Pendulum-v0", kw={"hidden_size_adversary": 16})
add("dqn-lnmlp-dueling-false", "DQN", "LnMlpPolicy", pk={"dueling": False})
add("acktr-cnn", "ACKTR", "CnnPolicy", env=["Img"])
add("acer-cnnlstm", "ACER", "CnnLstmPolicy", env=["Img"], pk={"n_lstm": 8})
add("ppo1-cnn", "PPO1", "CnnPolicy", env=["Img"])
add("sac-lncnn", "SAC", "LnCnnPolicy", env=["Img", "box"], pk={"layers": [8]})
add("ppo2-actfun", "PPO2", pk={"net_arch": [16, {"pi": [8]}], "act_fun": "tf.nn.relu"})
add("dqn-actfun", "DQN", pk={"layers": [16], "act_fun": "tf.nn.elu"})
add("sac-actfun", "SAC", env="Pendulum-v0", pk={"layers": [16], "act_fun": "tf.nn.tanh"})
print(json.dumps(S))
