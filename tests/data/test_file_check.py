"""missing_files: every listed path that is not a file, found in one pass (checked against os.path.isfile)."""

import os
import random

from stop_lightning.data.file_check import missing_files


def test_missing_files_on_100k_rows_match_a_per_file_check(tmp_path):
    rng = random.Random(0)
    # 100k rows over 100 folders; only the first 2,000 rows' files are created (creating 100k files
    # takes longer than the check), so the rest are missing too, as a real wrong video_root would be.
    folders = [tmp_path / f"class_{c:03d}" for c in range(100)]
    paths = [folders[i % 100] / f"clip_{i:06d}.avi" for i in range(100_000)]
    for folder in folders[:-1]:  # the last folder does not exist at all
        folder.mkdir()
    absent = set(rng.sample(range(2_000), 37))
    for i, path in enumerate(paths[:2_000]):
        if i % 100 != 99 and i not in absent:
            path.touch()
    (folders[0] / "clip_000000.avi").unlink()
    (folders[0] / "clip_000000.avi").mkdir()  # a folder is not a file
    (folders[1] / "clip_000001.avi").unlink()
    (folders[1] / "clip_000001.avi").symlink_to(tmp_path / "nowhere")  # dangling link
    (folders[2] / "clip_000002.avi").unlink()
    (folders[2] / "clip_000002.avi").symlink_to(folders[3] / "clip_000003.avi")  # a link to a file is fine
    listed = paths + paths[:500]  # a path listed twice (train and test) is reported once
    expected = [p for p in paths if not os.path.isfile(p)]
    assert missing_files(listed) == expected
    assert (
        98_000 < len(expected) < 100_000
        and paths[0] in expected
        and paths[1] in expected
        and paths[2] not in expected
    )
