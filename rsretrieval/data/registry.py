"""One :class:`DatasetInfo` per supported dataset: where it comes from and how it must be laid out.

None of RSITMD, RSICD, UCM-Captions or Sydney-Captions publishes a licence or a stable download
link (they live on Google Drive / Baidu / MEGA), so every real dataset here has ``url=None``:
users fetch the files themselves and :func:`rsretrieval.data.prepare_dataset` tells them exactly
where to put what. ``sha256`` stays empty wherever nobody here could read a published checksum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rsretrieval.errors import DatasetNotFoundError

_logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test", "all")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset.

    Attributes:
        name: registry name, as passed to :func:`rsretrieval.data.load_dataset`.
        title: human-readable name.
        annotation_files: files, relative to the dataset root, that must exist.
        image_dir: folder of the images, relative to the dataset root.
        source: where users obtain the files.
        citation: BibTeX of the paper(s) to cite.
        url: a direct, licence-clean archive URL, or ``None`` when downloads are manual.
        sha256: expected SHA-256 per archive file name (empty where unknown).
        splits: the split names :func:`load_dataset` accepts.
        notes: caveats (scene labels, splits, duplicates).
        reader: which parser reads the annotations (``karpathy``, ``precomp`` or ``csv``).
        optional_files: extra files or folders, relative to the root, with what they add.
        example_images: a few image names, shown in :meth:`layout`.
        scene_rule: how images get their scene when no record names one: ``prefix`` (file name before
            the last ``_``), ``ucm`` (UC-Merced id blocks) or ``field`` (``unknown``).
        scene_vocabulary: the words for its scenes in captions and prompts: ``rs`` (the real
            benchmarks' labels) or ``synthrs`` (SynthRS's own scene nouns).
        generated: the files are made locally (SynthRS), not fetched: a missing dataset is generated
            on first use in its default folder.
    """

    name: str
    title: str
    annotation_files: tuple[str, ...]
    image_dir: str
    source: str
    citation: str
    url: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    splits: tuple[str, ...] = SPLITS
    notes: str = ""
    reader: str = "karpathy"
    optional_files: dict[str, str] = field(default_factory=dict)
    example_images: tuple[str, ...] = ()
    scene_rule: str = "field"
    scene_vocabulary: str = "rs"
    generated: bool = False

    def layout(self, root: str | Path = "ROOT") -> str:
        """The folder tree users should create, as text.

        Args:
            root: the folder shown at the top of the tree.

        Returns:
            A multi-line tree such as ``ROOT/`` / ``├── dataset_RSITMD.json`` / ``└── images/``.
        """
        lines = [f"{root}/"]
        entries: list[tuple[str, list[str]]] = [(f, []) for f in self.annotation_files]
        for path, why in self.optional_files.items():
            entries.append((f"{path}    (optional: {why})", []))
        entries.append((f"{self.image_dir}/", [*self.example_images, "..."]))
        for k, (entry, children) in enumerate(entries):
            last = k == len(entries) - 1
            lines.append(("└── " if last else "├── ") + entry)
            for c, child in enumerate(children):
                branch = "└── " if c == len(children) - 1 else "├── "
                lines.append(("    " if last else "│   ") + branch + child)
        return "\n".join(lines)

    def missing_files(self, root: str | Path) -> list[Path]:
        """The required annotation files and image folder absent under ``root``."""
        root = Path(root)
        want = [root / f for f in self.annotation_files] + [root / self.image_dir]
        return [p for p in want if not p.exists()]

    def not_found_message(self, root: str | Path, missing: list[Path] | None = None) -> str:
        """The message of :class:`DatasetNotFoundError`: what is missing, where it goes, where to get it."""
        root = Path(root)
        missing = self.missing_files(root) if missing is None else missing
        what = ", ".join(str(p) for p in missing) or "(nothing)"
        how = (
            f"`prepare_dataset({self.name!r}, {str(root)!r})` can download it from {self.url}."
            if self.url
            else "Downloads are manual for this dataset: it has no stable, licence-clean download URL, "
            "so fetch the files yourself."
        )
        return (
            f"Dataset {self.name!r} not found in root={str(root)!r}: missing {what}.\n"
            f"Put the files in exactly this layout:\n{self.layout(root)}\n"
            f"Source: {self.source}\n{how}\n"
            f"Then run `python -m rsretrieval data check {self.name} --root {root}` to verify it."
        )


_BIB_RSITMD = """@article{yuan2022exploring,
  title={Exploring a Fine-Grained Multiscale Method for Cross-Modal Remote Sensing Image Retrieval},
  author={Yuan, Zhiqiang and Zhang, Wenkai and Fu, Kun and Li, Xuan and Deng, Chubo
          and Wang, Hongqi and Sun, Xian},
  journal={IEEE Transactions on Geoscience and Remote Sensing},
  volume={60},
  year={2022}
}"""

_BIB_RSICD = """@article{lu2018exploring,
  title={Exploring Models and Data for Remote Sensing Image Caption Generation},
  author={Lu, Xiaoqiang and Wang, Binqiang and Zheng, Xiangtao and Li, Xuelong},
  journal={IEEE Transactions on Geoscience and Remote Sensing},
  doi={10.1109/TGRS.2017.2776321},
  year={2018}
}"""

_BIB_QU = """@inproceedings{qu2016deep,
  title={Deep Semantic Understanding of High Resolution Remote Sensing Image},
  author={Qu, Bo and Li, Xuelong and Tao, Dacheng and Lu, Xiaoqiang},
  booktitle={International Conference on Computer, Information and Telecommunication Systems (CITS)},
  year={2016}
}"""

_BIB_UCM = """@inproceedings{yang2010bag,
  title={Bag-of-Visual-Words and Spatial Extensions for Land-Use Classification},
  author={Yang, Yi and Newsam, Shawn},
  booktitle={ACM SIGSPATIAL International Conference on Advances in Geographic Information Systems},
  year={2010}
}"""

_BIB_SYDNEY = """@article{zhang2015saliency,
  title={Saliency-Guided Unsupervised Feature Learning for Scene Classification},
  author={Zhang, Fan and Du, Bo and Zhang, Liangpei},
  journal={IEEE Transactions on Geoscience and Remote Sensing},
  year={2015}
}"""

_RSICD_PAGE = "https://github.com/201528014227051/RSICD_optimal"

#: The 21 UC-Merced land-use classes in alphabetical order; UCM image ``n`` (1..2100) has class
#: ``UCM_CLASSES[(n - 1) // 100]``.
UCM_CLASSES: tuple[str, ...] = (
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral",
    "denseresidential", "forest", "freeway", "golfcourse", "harbor", "intersection",
    "mediumresidential", "mobilehomepark", "overpass", "parkinglot", "river", "runway",
    "sparseresidential", "storagetanks", "tenniscourt",
)  # fmt: skip

_REGISTRY: dict[str, DatasetInfo] = {
    "rsitmd": DatasetInfo(
        name="rsitmd",
        title="RSITMD (Remote Sensing Image-Text Match Dataset)",
        annotation_files=("dataset_RSITMD.json",),
        image_dir="images",
        source="https://github.com/xiaoyuan1996/AMFMN (README links to the images and dataset_RSITMD.json)",
        citation=_BIB_RSITMD,
        notes="4,743 images (256x256 .tif), 5 captions each, 4,291 train / 452 test, no val in the file: "
        "val is carved from train. Scene = file-name prefix before the last '_'.",
        example_images=("airport_1.tif", "denseresidential_12.tif"),
        scene_rule="prefix",
    ),
    "rsicd": DatasetInfo(
        name="rsicd",
        title="RSICD (Remote Sensing Image Captioning Dataset)",
        annotation_files=("dataset_rsicd.json",),
        image_dir="RSICD_images",
        source=f"{_RSICD_PAGE} (README links to Baidu Pan / Google Drive)",
        citation=_BIB_RSICD,
        notes="10,921 images (224x224 .jpg), 54,605 captions of which only ~24k are unique. "
        "Scene = file-name prefix; the 921 images named 00001.jpg..00921.jpg get theirs from "
        "txtclasses_rsicd/<Class>.txt, else 'unknown'.",
        optional_files={"txtclasses_rsicd/<Class>.txt": "scene lists, one image file name per line"},
        example_images=("airport_1.jpg", "00001.jpg"),
        scene_rule="prefix",
    ),
    "ucm": DatasetInfo(
        name="ucm",
        title="UCM-Captions (UC Merced Land Use with captions, Qu et al. 2016)",
        annotation_files=("dataset.json",),
        image_dir="imgs",
        source=f"captions by Qu et al. 2016, linked from {_RSICD_PAGE}; images from UC Merced Land Use",
        citation=_BIB_QU + "\n" + _BIB_UCM,
        notes="2,100 images 1.tif..2100.tif, 21 classes in alphabetical blocks of 100 ids; the split comes "
        "from the json 'split' field.",
        example_images=("1.tif", "2100.tif"),
        scene_rule="ucm",
    ),
    "sydney": DatasetInfo(
        name="sydney",
        title="Sydney-Captions (Qu et al. 2016)",
        annotation_files=("dataset.json",),
        image_dir="imgs",
        source=f"captions by Qu et al. 2016, linked from {_RSICD_PAGE}; images from the Sydney scene set",
        citation=_BIB_QU + "\n" + _BIB_SYDNEY,
        notes="613 images (500x500), 7 classes. The published json carries no class, so scenes are 'unknown' "
        "unless an image record has a 'label' or 'class' field.",
        example_images=("1.tif", "613.tif"),
    ),
    "synthrs": DatasetInfo(
        name="synthrs",
        title="SynthRS (synthetic top-down scenes made by rsretrieval)",
        annotation_files=("dataset_RSITMD.json",),
        image_dir="images",
        source="generated locally on first use (or `python -m rsretrieval data synth --root ROOT`)",
        citation="",
        notes="Written by rsretrieval.data.synthrs in RSITMD's layout; objects.json (boxes/masks) is exposed "
        "as metadata['objects_file'].",
        optional_files={"objects.json": "object boxes and masks"},
        example_images=("<scene>_<n>.<ext>",),
        scene_rule="prefix",
        scene_vocabulary="synthrs",
        generated=True,
    ),
    "karpathy": DatasetInfo(
        name="karpathy",
        title="Any Karpathy-style caption json",
        annotation_files=("dataset.json",),
        image_dir="images",
        source="your own files; root may also be the json file itself (pass images_dir=...)",
        citation="",
        notes="Scene from a 'label'/'class'/'scene' field of each image record, else 'unknown' "
        "(pass scene_rule='prefix' to use the file-name prefix).",
        example_images=("img_0001.jpg",),
    ),
    "csv": DatasetInfo(
        name="csv",
        title="Your own captioned images, in open_clip's CSV/TSV format",
        annotation_files=("train.csv",),
        image_dir=".",
        reader="csv",
        source="your own files: one row per (image, caption); root is the CSV file, or a folder of "
        "train.csv, val.csv and test.csv (.tsv with tabs)",
        citation="",
        notes="Columns as open_clip names them: image path 'filepath' and caption 'title' (csv_img_key=, "
        "csv_caption_key=); an optional scene column (csv_scene_key=) and split column ('split', values "
        "train/val/test). Rows of one image are grouped into one image with several captions. Image paths "
        "are relative to the CSV's folder. A single file without a split column is all train (val carved).",
        optional_files={"val.csv, test.csv": "the val and test splits"},
        example_images=("chips/0001.png",),
    ),
    "precomp": DatasetInfo(
        name="precomp",
        title="AMFMN/GaLR/PE-RSITR 'precomp' caption text files",
        annotation_files=("train_caps.txt", "train_filename.txt"),
        image_dir="images",
        reader="precomp",
        source="https://github.com/xiaoyuan1996/AMFMN (data/<name>_precomp/); images from the dataset itself",
        citation="",
        notes="{train,val,test}_caps.txt: one caption per line; {split}_filename.txt: one line per image "
        "(5 consecutive captions each) or one line per caption. Scene = file-name prefix.",
        optional_files={
            "test_caps.txt, test_filename.txt": "the test split",
            "val_caps.txt, val_filename.txt": "a validation split (else carved from train)",
        },
        example_images=("airport_1.tif",),
        scene_rule="prefix",
    ),
}


def list_datasets() -> list[str]:
    """The names :func:`rsretrieval.data.load_dataset` accepts, sorted."""
    return sorted(_REGISTRY)


def get_dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name`` (case-insensitive).

    Raises:
        DatasetNotFoundError: the name is unknown; the message lists the valid names.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    aliases = {"ucmcaptions": "ucm", "sydneycaptions": "sydney", "ucmerced": "ucm"}
    key = aliases.get(key, key)
    if key not in _REGISTRY:
        raise DatasetNotFoundError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    return _REGISTRY[key]
