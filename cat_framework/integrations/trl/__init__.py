"""CaT's teacher as a TRL ``GRPOTrainer`` reward function (``pip install 'cat-framework[trl]'``).

Importing this package imports neither TRL nor torch: the reward is a plain callable, and TRL
calls it. See ``docs/trl.md``.
"""

from cat_framework.integrations.trl.groups import SplitGroupError
from cat_framework.integrations.trl.reward import TeacherReward, teacher_reward

__all__ = ["SplitGroupError", "TeacherReward", "teacher_reward"]
