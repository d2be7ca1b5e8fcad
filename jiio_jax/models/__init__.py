"""Flax Linen MDEQ modules, heads, injection maps and full models (NHWC, one sample per call).

See ``jiio_jax.models.mdeq`` for the pure ``inject`` / ``cell`` / ``head`` bridge to the
solvers and JIIO, and ``jiio_jax.models.configs`` for the reference architectures.
"""

from jiio_jax.models.cell import CellInput as CellInput
from jiio_jax.models.cell import MDEQCell as MDEQCell
from jiio_jax.models.cell import ResidualBlock as ResidualBlock
from jiio_jax.models.cell import dropout_masks as dropout_masks
from jiio_jax.models.cell import zeros_state as zeros_state
from jiio_jax.models.configs import CELEBA_GEN as CELEBA_GEN
from jiio_jax.models.configs import CELEBA_GEN_TINY as CELEBA_GEN_TINY
from jiio_jax.models.configs import CIFAR_CLS as CIFAR_CLS
from jiio_jax.models.configs import CONFIGS as CONFIGS
from jiio_jax.models.configs import MNIST_CLS as MNIST_CLS
from jiio_jax.models.configs import OMNIGLOT_META as OMNIGLOT_META
from jiio_jax.models.configs import TINY_CLS as TINY_CLS
from jiio_jax.models.configs import TINY_GEN as TINY_GEN
from jiio_jax.models.configs import TINY_META as TINY_META
from jiio_jax.models.configs import MDEQConfig as MDEQConfig
from jiio_jax.models.configs import get_config as get_config
from jiio_jax.models.conv_decoder import ConvDecoder as ConvDecoder
from jiio_jax.models.heads import ClassifierHead as ClassifierHead
from jiio_jax.models.heads import ImageDecoder as ImageDecoder
from jiio_jax.models.heads import MetaHead as MetaHead
from jiio_jax.models.injections import FiLM as FiLM
from jiio_jax.models.injections import ImageStem as ImageStem
from jiio_jax.models.injections import LatentMaps as LatentMaps
from jiio_jax.models.layers import GroupNorm as GroupNorm
from jiio_jax.models.layers import WeightNormConv as WeightNormConv
from jiio_jax.models.layers import resize_bilinear_align_corners as resize_bilinear_align_corners
from jiio_jax.models.layers import upsample_nearest as upsample_nearest
from jiio_jax.models.mdeq import DEFAULT_SOLVER as DEFAULT_SOLVER
from jiio_jax.models.mdeq import DEQInfo as DEQInfo
from jiio_jax.models.mdeq import MDEQClassifier as MDEQClassifier
from jiio_jax.models.mdeq import MDEQGenerator as MDEQGenerator
from jiio_jax.models.mdeq import MDEQMetaLearner as MDEQMetaLearner
from jiio_jax.models.mdeq import MetaInput as MetaInput
from jiio_jax.models.mdeq import cell_fn as cell_fn
from jiio_jax.models.mdeq import count_params as count_params
