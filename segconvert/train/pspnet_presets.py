"""PSPNet training presets: hszhao/semseg, PSPNet-TF-Reproduce (L2-SP) and fast-semantic-segmentation.

Each value carries the file it is read from. Registered into :mod:`segconvert.train.recipes` on import (the
registry imports this module), so ``segconvert recipes`` lists them.
"""

from __future__ import annotations

from .recipes import Recipe, RecipeValue

__all__ = ["pspnet_recipes"]

_SEMSEG = "hszhao/semseg@7192f92"
_TFR = "holyseven/PSPNet-TF-Reproduce@0f9e7aa"
_FSS = "oandrienko/fast-semantic-segmentation@42c6bbe"
IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def _run_values(**model: tuple[object, str]) -> dict[str, RecipeValue]:
    """segconvert's run options (the CLI flags set them) and the per-source model details given."""
    v, us = RecipeValue, "segconvert"
    values = {
        "solver.snapshot": v(0, f"{us}: converted-weights snapshot interval (0: final.safetensors only)"),
        "run.num_workers": v(2, f"{us}: DataLoader processes per rank (the batches do not depend on it)"),
        "run.checkpoint_every": v(1000, f"{us}: full-state checkpoint interval (iterations)"),
        "run.keep_checkpoints": v(2, f"{us}: full-state checkpoints kept"),
        "run.grad_accum": v(1, f"{us}: micro-batches per step and rank (per-rank batch = batch / world / this)"),
        "run.amp": v("none", f"{us}: --amp none|bf16|fp16 (autocast; GradScaler for fp16)"),
        "run.channels_last": v(False, f"{us}: --channels-last"),
        "run.grad_checkpointing": v(
            "none",
            f"{us}: --grad-checkpointing [light|all|PARTS] (light: stem, layer1-3; all: + layer4, ppm, head; "
            "or a comma list of stem, layer1..layer4, ppm, head)",
        ),
        "run.compile": v(False, f"{us}: --compile (torch.compile of the training forward)"),
        "run.compile_backend": v("inductor", f"{us}: torch.compile backend (inductor; aot_eager: no code generation)"),
    }
    values.update({k: v(val, src) for k, (val, src) in model.items()})
    return values


def _semseg(dataset: str, crop: int, epochs: int, classes: int, cfg: str) -> Recipe:
    v = RecipeValue
    train, tf = "tool/train.py", "util/transform.py"
    values = {
        "solver.optimizer": v("torch_sgd", f"{train}: torch.optim.SGD(params_list, momentum, weight_decay)"),
        "solver.base_lr": v(0.01, f"{cfg}: TRAIN.base_lr"),
        "solver.momentum": v(0.9, f"{cfg}: TRAIN.momentum"),
        "solver.weight_decay": v(1e-4, f"{cfg}: TRAIN.weight_decay (SGD weight_decay: every parameter)"),
        "solver.power": v(0.9, f"{cfg}: TRAIN.power"),
        "solver.schedule": v(
            "poly_after_step",
            f"{train}: poly_learning_rate(base_lr, current_iter, max_iter) "
            "set after optimizer.step(); current_iter = epoch*len(loader)+i+1",
        ),  # fmt: skip
        "solver.epochs": v(epochs, f"{cfg}: TRAIN.epochs (max_iter = epochs * len(train_loader))"),
        "solver.head_lr_mult": v(10.0, f"{train}: modules_new ppm, cls, aux at base_lr * 10"),
        "solver.backbone_lr_mult": v(1.0, f"{train}: modules_ori layer0..layer4 at base_lr"),
        "data.batch_size": v(16, f"{cfg}: TRAIN.batch_size (global; per GPU = batch_size / ngpus_per_node)"),
        "data.drop_last": v(True, f"{train}: DataLoader(drop_last=True)"),
        "data.pipeline": v("semseg", f"{train}: train_transform"),
        "data.order": v(
            ["RandScale", "RandRotate", "RandomGaussianBlur", "RandomHorizontalFlip", "Crop", "Normalize"],
            f"{train}: transform.Compose([...]) order (ToTensor before Normalize)",
        ),  # fmt: skip
        "data.crop_size": v([crop, crop], f"{cfg}: TRAIN.train_h, train_w"),
        "data.scale_range": v([0.5, 2.0], f"{cfg}: TRAIN.scale_min, scale_max"),
        "data.rotate_range": v([-10.0, 10.0], f"{cfg}: TRAIN.rotate_min, rotate_max"),
        "data.rotate_p": v(0.5, f"{tf}: RandRotate p=0.5"),
        "data.blur_p": v(0.5, f"{tf}: RandomGaussianBlur random() < 0.5"),
        "data.blur_radius": v(5, f"{tf}: RandomGaussianBlur radius=5"),
        "data.flip_p": v(0.5, f"{tf}: RandomHorizontalFlip p=0.5"),
        "data.pad": v("centre", f"{tf}: Crop pads pad_h_half = int(pad_h / 2) before"),
        "data.mean": v(IMAGENET_MEAN, f"{train}: mean = [0.485, 0.456, 0.406] * 255 (RGB; also the pad fill)"),
        "data.std": v(IMAGENET_STD, f"{train}: std = [0.229, 0.224, 0.225] * 255"),
        "data.ignore_label": v(255, f"{cfg}: TRAIN.ignore_label (label pad and rotation fill)"),
        "model.arch": v("pspnet", f"{cfg}: TRAIN.arch psp"),
        "model.depth": v(50, f"{cfg}: TRAIN.layers"),
        "model.num_classes": v(classes, f"{cfg}: DATA.classes"),
        "model.norm": v("syncbn", f"{cfg}: TRAIN.sync_bn True ({train}: convert_sync_batchnorm)"),
        "model.aux_weight": v(0.4, f"{cfg}: TRAIN.aux_weight"),
        "model.zoom_factor": v(8, f"{cfg}: TRAIN.zoom_factor (logits upsampled to the crop)"),
        "model.resize": v("align_corners", "model/pspnet.py: F.interpolate(bilinear, align_corners=True)"),
        "model.ppm_bins": v([1, 2, 3, 6], "model/pspnet.py: bins=(1, 2, 3, 6), adaptive pooling"),
        "model.ppm_mode": v("adaptive", "model/pspnet.py: nn.AdaptiveAvgPool2d(bin)"),
        "model.width_divisor": v(1, "segconvert: n divides every width (tests, CPU)"),
        "run.seed": v(0, "segconvert: the config's manual_seed is empty"),
        **_run_values(
            **{
                "model.dropout": (0.1, "model/pspnet.py: nn.Dropout2d(p=dropout), dropout=0.1 (cls and aux)"),
                "model.dropout_kind": ("channel", "model/pspnet.py: nn.Dropout2d (whole channels)"),
                "model.aux_head": ("psp", "model/pspnet.py: aux = conv3x3 256 + BN + ReLU + Dropout2d + conv1x1"),
                "model.bn_momentum": (0.1, "model/pspnet.py: nn.BatchNorm2d / SyncBatchNorm default momentum 0.1"),
            }
        ),
    }
    return Recipe(f"pspnet-semseg-{dataset}", f"PSPNet50 on {dataset} with hszhao/semseg's recipe", _SEMSEG, values)


def _l2sp(dataset: str, crop: int, rate2: float, max_iter: int, mode: int, classes: int, cmd: str) -> Recipe:
    v = RecipeValue
    tr, rd, nb = "train.py", "database/reader_segmentation.py", "model/network_base.py"
    means = {
        "cityscapes": [72.41519599, 82.93553322, 73.18188461],
        "ade20k": [122.67891434, 116.66876762, 104.00698793],
    }
    values = {
        "solver.optimizer": v("tf_momentum", f"{nb}: tf.train.MomentumOptimizer(lrn_rate, 0.9)"),
        "solver.base_lr": v(0.01, f"{tr}: --lrn_rate default"),
        "solver.momentum": v(0.9, f"{tr}: --momentum default"),
        "solver.power": v(0.9, f"{tr}: lrn_rate = (1 - step/max_iter)**0.9 * lrn_rate, step before the update"),
        "solver.schedule": v("poly_before_step", f"{tr}: lr computed from step, then step += 1"),
        "solver.max_iter": v(max_iter, cmd),
        "solver.weight_decay": v(0.0, f"{nb}: no optimizer decay; the regulariser below is added to the loss"),
        "l2sp.mode": v(mode, f"{cmd} (--weight_decay_mode; 0 plain L2 with the two rates, 1 L2-SP)"),
        "l2sp.rate": v(1e-4, f"{cmd} (--weight_decay_rate: existing layers)"),
        "l2sp.rate2": v(rate2, f"{cmd} (--weight_decay_rate2: new layers)"),
        "l2sp.only": v("conv_kernels", f"{nb}: _decay sums tf.nn.l2_loss over variables named 'weights'"),
        "data.batch_size": v(16, f"{cmd} (batch_size x gpu_num)"),
        "data.pipeline": v("l2sp", f"{rd}: generate_crops_for_training"),
        "data.order": v(
            ["TFColorJitter", "Normalize", "RandomHorizontalFlip", "TFScale", "TFRotateNearest", "Crop"],
            f"{rd}: generate_crops_for_training order",
        ),  # fmt: skip
        "data.color_jitter": v(True, f"{rd}: random_blur (brightness 63/255, saturation 0.5-1.5, contrast 0.2-1.8)"),
        "data.crop_size": v([crop, crop], f"{cmd} (--train_image_size)"),
        "data.scale_range": v([0.5, 2.0], f"{tr}: --scale_min, --scale_max defaults"),
        "data.random_rotate": v(True, f"{tr}: --random_rotate default 1 (the README commands pass 0)"),
        "data.rotate_range": v([-10.0, 10.0], f"{rd}: tf.random_uniform([], -10.0, 10.0) degrees"),
        "data.flip_p": v(0.5, f"{rd}: image_mirroring uniform < 0.5"),
        "data.pad": v("centre", f"{rd}: pad_to_bounding_box offset (crop_h - h)//2"),
        "data.mean": v(means[dataset], f"{rd}: find_data_path img_mean (RGB)"),
        "data.ignore_label": v(255, f"{rd}: IGNORE_LABEL"),
        "model.arch": v("pspnet", "model/pspnet_mg.py: PSPNetMG"),
        "model.depth": v(50, f"{tr}: --network resnet_v1_50"),
        "model.num_classes": v(classes, f"{rd}: find_data_path num_classes"),
        "model.norm": v("syncbn", f"{tr}: bn_mode 'gather' (statistics over all GPUs)"),
        "model.bn_momentum": v(0.1, "issue 12: moving statistics EMA 0.9 (PyTorch momentum 0.1; not re-read)"),
        "model.aux_weight": v(0.4, "issue 12 (has_aux_loss default 1)"),
        "model.resize": v("half_pixel", "README 'Uncertainties' 5: tf.image.resize without align_corners"),
        "model.ppm_mode": v("tf_same", "reference_models/pspnet.py: PSPNet-TF-Reproduce pools TF SAME"),
        "model.width_divisor": v(1, "segconvert: n divides every width (tests, CPU)"),
        "run.seed": v(0, "segconvert"),
        **_run_values(
            **{
                "model.dropout": (0.1, "segconvert: PSPNet's conv5_4 dropout 0.1 (not re-read from this source)"),
                "model.dropout_kind": ("element", "segconvert: element-wise (not re-read from this source)"),
                "model.aux_head": ("psp", "issue 12: aux head on stage 3 (3x3 256 + BN + ReLU + dropout + 1x1)"),
            }
        ),
    }
    return Recipe(f"pspnet-l2sp-{dataset}", f"PSPNet50 on {dataset}, PSPNet-TF-Reproduce (L2 / L2-SP)", _TFR, values)


def _fss() -> Recipe:
    v = RecipeValue
    cfg, docs = "configs/pspnet_1.0_713_resnet_v1.config", "docs/pspnet.md"
    values = {
        "solver.optimizer": v("tf_momentum", f"{cfg}: momentum_optimizer"),
        "solver.base_lr": v(0.01, f"{cfg}: polynomial_decay_learning_rate.initial_learning_rate"),
        "solver.momentum": v(0.9, f"{cfg}: momentum_optimizer_value"),
        "solver.power": v(0.9, f"{cfg}: polynomial_decay_learning_rate.power"),
        "solver.schedule": v("poly_before_step", f"{cfg}: decay_steps 120000 (tf polynomial_decay of global_step)"),
        "solver.max_iter": v(120000, f"{cfg}: train_config.num_steps"),
        "solver.weight_decay": v(0.0, f"{cfg}: no optimizer decay; l2_regularizer below"),
        "l2sp.mode": v(0, f"{cfg}: hyperparams.regularizer.l2_regularizer (plain L2)"),
        "l2sp.rate": v(1e-4, f"{cfg}: l2_regularizer.weight (tf: weight * sum(w^2) / 2)"),
        "l2sp.rate2": v(1e-4, f"{cfg}: the same regulariser on every conv"),
        "l2sp.only": v("conv_kernels", f"{cfg}: slim arg_scope weights_regularizer (conv kernels)"),
        "data.batch_size": v(8, f"{cfg}: train_config.batch_size"),
        "data.pipeline": v("fss", f"{cfg}: preprocessor_step order"),
        "data.order": v(["TFScale", "Crop", "RandomHorizontalFlip", "Normalize"], f"{cfg}: preprocessor_step order"),
        "data.crop_size": v([768, 768], f"{docs}: crop 768 (config: 713; --set data.crop_size=[713,713])"),
        "data.scale_range": v([0.5, 2.0], f"{cfg}: random_image_scale min/max_scale_ratio"),
        "data.flip_p": v(0.5, f"{cfg}: random_horizontal_flip"),
        "data.pad": v("bottom_right", "tf.image.pad_to_bounding_box at offset 0 (random_image_crop)"),
        "data.label_pad": v(255, "segconvert fix: the source pads labels with 0 (class road); 0 = original"),
        "data.label_shrink": v(8, "architectures/pspnet_architecture.py: labels resized to the logits by nearest"),
        "data.mean": v([123.68, 116.78, 103.94], "slim resnet_v1 preprocessing means (RGB; not re-read)"),
        "data.std": v(None, "slim resnet_v1: mean subtraction only"),
        "data.ignore_label": v(255, "cityscapes trainIds ignore"),
        "model.arch": v("pspnet", f"{cfg}: model.pspnet"),
        "model.depth": v(50, f"{cfg}: feature_extractor dilated_resnet50"),
        "model.num_classes": v(19, f"{cfg}: num_classes"),
        "model.norm": v("bn", f"{cfg}: batch_norm.train true"),
        "model.bn_momentum": v(0.0003, f"{cfg}: batch_norm.decay 0.9997 (PyTorch momentum = 1 - decay)"),
        "model.bn_eps": v(1e-5, f"{cfg}: batch_norm.epsilon"),
        "model.ppm_bins": v([1, 2, 3, 6], f"{cfg}: pooling_factors"),
        "model.ppm_mode": v("tf_valid", "reference_models/pspnet.py: fast-semantic-segmentation pools VALID"),
        "model.aux_weight": v(0.4, f"{cfg}: use_auxiliary_loss true (weight 0.4 per issue 12)"),
        "model.resize": v("half_pixel", "tf.image.resize_bilinear (align_corners False)"),
        "model.width_divisor": v(1, "segconvert: n divides every width (tests, CPU)"),
        "init.checkpoint": v("resnet_v1_50.ckpt", f"{cfg}: fine_tune_checkpoint (slim2torch converts it)"),
        "run.seed": v(0, "segconvert"),
        **_run_values(
            **{
                "model.dropout": (0.1, "segconvert: PSPNet's conv5_4 dropout 0.1 (not re-read from this source)"),
                "model.dropout_kind": ("element", "segconvert: element-wise (not re-read from this source)"),
                "model.aux_head": ("conv1x1", "issue 12: aux 0.4 as a 1x1 conv on block 2"),
            }
        ),
    }
    return Recipe("pspnet-fss-cityscapes", "PSPNet50 on Cityscapes, fast-semantic-segmentation", _FSS, values)


def pspnet_recipes() -> list[Recipe]:
    c = "config/{0}/{0}_pspnet50.yaml"
    readme = "README.md: train command"
    return [
        _semseg("voc", 473, 50, 21, c.format("voc2012")),
        _semseg("ade20k", 473, 100, 150, c.format("ade20k")),
        _semseg("cityscapes", 713, 200, 19, c.format("cityscapes")),
        _l2sp("cityscapes", 816, 1e-3, 30000, 1, 19, f"{readme} 3a (model.ckpt-30000)"),
        _l2sp("ade20k", 480, 1e-4, 90000, 0, 150, f"{readme} (run.py, --train_max_iter 90000)"),
        _fss(),
    ]
