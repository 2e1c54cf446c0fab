"""Label definitions of the evaluation datasets (facts from the public dataset definitions).

Cityscapes: the label table of the Cityscapes benchmark (name, labelId, trainId, category, hasInstances,
ignoreInEval, colour) and the average instance sizes used by the official iIoU weighting.
VOC 2012: the 21 class names. ADE20K SceneParsing: the 150 class names (annotation value v -> class v - 1).
"""

from __future__ import annotations

from typing import NamedTuple

IGNORE_INDEX = 255


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int
    category: str
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# fmt: off
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled",             0, 255, "void",         False, True,  (0, 0, 0)),
    CityscapesLabel("ego vehicle",           1, 255, "void",         False, True,  (0, 0, 0)),
    CityscapesLabel("rectification border",  2, 255, "void",         False, True,  (0, 0, 0)),
    CityscapesLabel("out of roi",            3, 255, "void",         False, True,  (0, 0, 0)),
    CityscapesLabel("static",                4, 255, "void",         False, True,  (0, 0, 0)),
    CityscapesLabel("dynamic",               5, 255, "void",         False, True,  (111, 74, 0)),
    CityscapesLabel("ground",                6, 255, "void",         False, True,  (81, 0, 81)),
    CityscapesLabel("road",                  7, 0,   "flat",         False, False, (128, 64, 128)),
    CityscapesLabel("sidewalk",              8, 1,   "flat",         False, False, (244, 35, 232)),
    CityscapesLabel("parking",               9, 255, "flat",         False, True,  (250, 170, 160)),
    CityscapesLabel("rail track",           10, 255, "flat",         False, True,  (230, 150, 140)),
    CityscapesLabel("building",             11, 2,   "construction", False, False, (70, 70, 70)),
    CityscapesLabel("wall",                 12, 3,   "construction", False, False, (102, 102, 156)),
    CityscapesLabel("fence",                13, 4,   "construction", False, False, (190, 153, 153)),
    CityscapesLabel("guard rail",           14, 255, "construction", False, True,  (180, 165, 180)),
    CityscapesLabel("bridge",               15, 255, "construction", False, True,  (150, 100, 100)),
    CityscapesLabel("tunnel",               16, 255, "construction", False, True,  (150, 120, 90)),
    CityscapesLabel("pole",                 17, 5,   "object",       False, False, (153, 153, 153)),
    CityscapesLabel("polegroup",            18, 255, "object",       False, True,  (153, 153, 153)),
    CityscapesLabel("traffic light",        19, 6,   "object",       False, False, (250, 170, 30)),
    CityscapesLabel("traffic sign",         20, 7,   "object",       False, False, (220, 220, 0)),
    CityscapesLabel("vegetation",           21, 8,   "nature",       False, False, (107, 142, 35)),
    CityscapesLabel("terrain",              22, 9,   "nature",       False, False, (152, 251, 152)),
    CityscapesLabel("sky",                  23, 10,  "sky",          False, False, (70, 130, 180)),
    CityscapesLabel("person",               24, 11,  "human",        True,  False, (220, 20, 60)),
    CityscapesLabel("rider",                25, 12,  "human",        True,  False, (255, 0, 0)),
    CityscapesLabel("car",                  26, 13,  "vehicle",      True,  False, (0, 0, 142)),
    CityscapesLabel("truck",                27, 14,  "vehicle",      True,  False, (0, 0, 70)),
    CityscapesLabel("bus",                  28, 15,  "vehicle",      True,  False, (0, 60, 100)),
    CityscapesLabel("caravan",              29, 255, "vehicle",      True,  True,  (0, 0, 90)),
    CityscapesLabel("trailer",              30, 255, "vehicle",      True,  True,  (0, 0, 110)),
    CityscapesLabel("train",                31, 16,  "vehicle",      True,  False, (0, 80, 100)),
    CityscapesLabel("motorcycle",           32, 17,  "vehicle",      True,  False, (0, 0, 230)),
    CityscapesLabel("bicycle",              33, 18,  "vehicle",      True,  False, (119, 11, 32)),
)
# fmt: on
# ("license plate", id -1) exists in the benchmark table but never appears in gtFine label images.

CITYSCAPES_NUM_LABEL_IDS = 34  # labelIds 0..33
CITYSCAPES_CATEGORIES = ("void", "flat", "construction", "object", "nature", "sky", "human", "vehicle")

# Average instance size per class in the training set, the iIoU weighting of the official evaluator.
CITYSCAPES_AVG_CLASS_SIZE: dict[str, float] = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}

CITYSCAPES_TRAIN_LABELS: tuple[CityscapesLabel, ...] = tuple(
    sorted((lab for lab in CITYSCAPES_LABELS if lab.train_id != 255), key=lambda lab: lab.train_id)
)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(lab.name for lab in CITYSCAPES_TRAIN_LABELS)


def cityscapes_label_to_train_lut() -> list[int]:
    """256-entry table labelId -> trainId (255 for ignored and unknown ids)."""
    lut = [IGNORE_INDEX] * 256
    for lab in CITYSCAPES_LABELS:
        lut[lab.id] = lab.train_id
    return lut


def cityscapes_train_to_label_lut() -> list[int]:
    """256-entry table trainId -> labelId (trainId 255 -> 0 'unlabeled'; others invalid -> 255)."""
    lut = [255] * 256
    for lab in CITYSCAPES_TRAIN_LABELS:
        lut[lab.train_id] = lab.id
    lut[IGNORE_INDEX] = 0
    return lut


VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator",
    "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal",
    "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
