"""The default synthetic benchmark is byte-identical to the one the demo's numbers were measured on.

``generate_synthetic`` gained an opt-in ``multi_relation`` option; at its default (0) the generator must draw
exactly the numbers it drew before, in the same order, and write the same files. The hashes below were recorded
from commit 6301f52's generator (before the option existed): ``generate_synthetic(root, num_images=40, seed=0,
workers=1)``, sha256 of every file it wrote, Pillow 13.0.0 (libjpeg-turbo 6.2 API), h5py 3.16.0 (HDF5 2.0.0).

The text files and the proposals' numbers are compared everywhere. The JPEG and HDF5 bytes also depend on the
encoder libraries, so they are compared only with the versions they were recorded with.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import features

from relground.data.synthetic import generate_synthetic

RECORDED_WITH = {"libjpeg": "6.2", "hdf5": "2.0.0"}
# Every written file but the encoded ones: XML, sentences, split lists, twins.json, synthetic.json.
TEXT_FILES = {
    "Annotations/1000000.xml": "ec780372a9e7c753b916fc8d19656a977d0b55c3c13747d984a602015bece500",
    "Annotations/1000001.xml": "bbfb7c19bab5e422974a7691ce35b798b109f2c816c015e36f879d8453ebad36",
    "Annotations/1000002.xml": "da944942581d7dc0d79d5cd16fb127eff51509c6fb271ecba22475ce0d8110ba",
    "Annotations/1000003.xml": "587070155991a3e2dbbc282a21210698d789006eaaa80e9bf1406d428e5287e7",
    "Annotations/1000004.xml": "dd98c9f4a2ce1e6c2898db77c089301d31f7565e90690663e45c584a4af95503",
    "Annotations/1000005.xml": "9ca51468af3dd53a63df847bddbdea44a2891fe49c3da43137e116b2869c1600",
    "Annotations/1000006.xml": "23ef255594a147653a6f56caa1f995468d06d915b5ac3d48d29cab02d275dd0c",
    "Annotations/1000007.xml": "b911e17555453e1f87651066eb2ed4ad24db7c3e01f37974ea28c8e3d0fde66a",
    "Annotations/1000008.xml": "76caee4b65e916ee17fa98d02d7a1c9eb96a93cd692be6417869179ab47bcda5",
    "Annotations/1000009.xml": "9d14f5638b72d463c34ecbee291195835c9afadf9b7112570d5949b940fc1974",
    "Annotations/1000010.xml": "7baeab007ed41fb5d7277aa07715da9274169c5621593d2d658182289cabe3d1",
    "Annotations/1000011.xml": "ddf95563aac41fb367cd57f51d4ae79b1a82cec0394d9ec90c8390f1220636d2",
    "Annotations/1000012.xml": "8ba184e17c0de91ad6e760753888d736e8f8ff6e07f5290c226eddc14dcc8b22",
    "Annotations/1000013.xml": "2b8f09110f5a8cda42b5da1bc8db611d91e417fd23bdbc4dbaca02e929f574c3",
    "Annotations/1000014.xml": "c13b62abdf76e934e5640ca60de85bf71579a2c38afe7d111c534e59b696a8cb",
    "Annotations/1000015.xml": "91e424365d0632af83bab66a14c9a0ebb4c938f013830c3fdfbea064d0c51bbc",
    "Annotations/1000016.xml": "1d4b3cac40032fde29a51b58ed72990138651a64f125ddde4fe59b82ed7e5e76",
    "Annotations/1000017.xml": "28b485159e042c4e6f2bdc9c56e506f80dc507c1f2799e98139f5cfea4884fac",
    "Annotations/1000018.xml": "7b7869b4b30ebc16cf74dc212dcc953fbf30450da69832dcc3a96243393bd9e2",
    "Annotations/1000019.xml": "954af3f6e1a91b47c938e83ecf327b5d74ee33ac73de62263e39aea7bbb46ff8",
    "Annotations/1000020.xml": "5800d1ae939c2a253caa9f6d417567c0251b3b4e8cc1330a31010a9f01f4cc56",
    "Annotations/1000021.xml": "aec35d3ca5542d8614f1975978f45cf484e6f713a87de7eeca904f1759786c2a",
    "Annotations/1000022.xml": "cf9b09bfb29626055b4aa0efbf52f14a65d95b73d12090888425276f1472c1dd",
    "Annotations/1000023.xml": "1b8f4def7df3c05a59be47dc267a9e3a1326023c99d8684739127739a11b8c71",
    "Annotations/1000024.xml": "fa35077ec15c287073c69250d43ffed83901c228e0fd177e4bbb67d9dd68b79a",
    "Annotations/1000025.xml": "e96950210c23582065a5114fddf6fdcbbcfc16ff7ae5825d5d679b686e666107",
    "Annotations/1000026.xml": "95b2ca665cd8b4b5908a95e849444d7fdf6454f03345e800768623933cef38ef",
    "Annotations/1000027.xml": "3a910a3e8fdf09313e6f088d76e09978c565c868a3e23b959e157d6cd9fe5fdf",
    "Annotations/1000028.xml": "d6fa789207327be52467ee68ebb708f979b99fbfac0ac1c5ce5d46b7d5944266",
    "Annotations/1000029.xml": "ff655ad2b0d7b81d57f3d497eb11db45408b2a6c0f630d16f1f475d46111fabd",
    "Annotations/1000030.xml": "11169c5617b731ab735635149bf16729b9d8698fe024054f84e75b02b0d89b01",
    "Annotations/1000031.xml": "ab6f1dc26999c46e5926560f14abece8af0d2614c57e2e3eddcc2a1a0173424b",
    "Annotations/1000032.xml": "fd8f4395585699dd6113726c24bb795b60a460dade00a71afe73fce6c1e729bd",
    "Annotations/1000033.xml": "c4e7e0c131675e44e6b22802caed7a7dca2d7c7e81ff0e9866d8f91b7d0e67e9",
    "Annotations/1000034.xml": "551012749ec35b63ca2b4de0ce1fb8fdaacaf8e829905af1d66825755159919e",
    "Annotations/1000035.xml": "e6a10e60a0e9ff8cc60111c6c12cbdcef409b943cf1f4dbe8520e700e801525c",
    "Annotations/1000036.xml": "aa3d0e8e33afac092a97fdda9d25135e6a7b17746d2752377d3b1aa6e0490886",
    "Annotations/1000037.xml": "2f1867d6d2b27f4a7f0260e86f929c7c712bdad6e89ded1ed9714bb42fe5b7b9",
    "Annotations/1000038.xml": "9027102eacd6a4589a6e378e89811f7f17a0047f7f621b370cb935c6d7b6a87f",
    "Annotations/1000039.xml": "e757e62964b3299f0a6255e11cbf748c90e51a1d09b9305dddfbd7ec5ed6317f",
    "Sentences/1000000.txt": "cd6cd563d364fd804d51370221fa77a3bc86dbe70efa23e4ca02c4c99db8177b",
    "Sentences/1000001.txt": "c8734ac441944dc3be6a175eb15b2b62a3240afdf36c8913fffd07f490e48f1e",
    "Sentences/1000002.txt": "9768340264a1f1d27c0093ae6e6c996a3356b4e0b94e773d90b2f9f9575be450",
    "Sentences/1000003.txt": "71c322553381481d1d127afd9d0994b18c7756835eee50a7cbb3e6fc6cfca1e0",
    "Sentences/1000004.txt": "93c8fe06aeb88528a21b9d886209e32d2c6c35f23f3da945fa095997523f25b1",
    "Sentences/1000005.txt": "a8f13c6b68eab362636b64f89ca7fd4708472b51ee093c29fd02ed9c9ac62c6d",
    "Sentences/1000006.txt": "6cf4a5b1089ea46035d11256bb94fb1840a5ba2191d33e44846a43dc48470749",
    "Sentences/1000007.txt": "44e6c303f8f763aa537600daeddae22989f7c6487d78397256fcdb3dbcd74a93",
    "Sentences/1000008.txt": "c34a2e7f9db660119794e3a97e6162382bc599f69954fb250b6a8fbe2a11a437",
    "Sentences/1000009.txt": "00443e7833a0e16a065542cc749454aac20c00e8132573ea28e98e206f08f1b1",
    "Sentences/1000010.txt": "f009605d4b6e3409416f541b996bb970b3b45e4ccfe1d68572b22dda7e91aac2",
    "Sentences/1000011.txt": "74f80c3b55ad8bbe2ba676da05a488abcbb4fc57d81462a734e28d94f76d142b",
    "Sentences/1000012.txt": "438bb3ce62fe13461972e0d26779317858d4449c90ccdd709af789351132e2e9",
    "Sentences/1000013.txt": "9fa3a577a998a2392a54681afd50b7bcf1aa2e57b9714f138d7abe0901919d7f",
    "Sentences/1000014.txt": "c11a16ce9b4c2cca385021c4fd32771ac6d1b78a1791c8ad9c0a88ba26c5d9c9",
    "Sentences/1000015.txt": "fb96e4f424d2d12f3117ea38d92815d00dc8c04c7fd5e88dce7e9263b8a9888b",
    "Sentences/1000016.txt": "a1fceb49acce332e2cf40f32a195ff4ddebe2fe653806020a8c899f2b8be9a16",
    "Sentences/1000017.txt": "1f343b545fc69ef77b39db9a4ce5fdaefb969e306dda679b65612bf37e67de99",
    "Sentences/1000018.txt": "d9189aeff3f87b4c79ced044f5d81b3c94752477b295f392663097a637845647",
    "Sentences/1000019.txt": "882a91427b90f688b0c98f1068931fc7cc8ab7c876d3bc8691bc58b2ab37fe76",
    "Sentences/1000020.txt": "1472b78aa4870c870d6da6499269c1cd06dce9d7aa7bed6b14f08acc209957ca",
    "Sentences/1000021.txt": "cb9988080b8c0894bd4603cf4d0d0fbc09764427a060a5a392efe338c44d5833",
    "Sentences/1000022.txt": "93486a3c7707e585615c8276ab589f05f6a1244a3ed1a061192db0dd2cc2cb57",
    "Sentences/1000023.txt": "68115b30d7bf102acd490f252cf4c22fb477033442abf24e04a37721b03ba9b0",
    "Sentences/1000024.txt": "adcae6d5492db0ceb7800d6b8f77671374f205e73009b0a86b780e1dacd1dbf2",
    "Sentences/1000025.txt": "bedd95310b344055c5e3ae049b63d6d3178b330deda3dcdfe9fe035a43faea60",
    "Sentences/1000026.txt": "65cebf0c092206649dc1f4ed77704e3ea7d3862edc0b68bc8789885071531591",
    "Sentences/1000027.txt": "4c09a1cfb77c5cd646a609dc98938cc7167cf64469d4567c4fef6bd9a9868dea",
    "Sentences/1000028.txt": "5686f37eb53bae9ff85c14a0a5c3190fb7f5c8b8ebf1010f32c7ff90d783c214",
    "Sentences/1000029.txt": "741ddb1e1deb53897f6052739cef80483e5e472ea90c1c676f153bffae9abd4f",
    "Sentences/1000030.txt": "8da398c1f987c8c134fa87d2f574bed7fc29fbd57b36e1be456a32556a453109",
    "Sentences/1000031.txt": "0d387626207b69753d8e4082edffd7340c2b86e099376c197b6a2ef59e332dc0",
    "Sentences/1000032.txt": "81cd5d0258d0670958b6d6df69f74422ef6acfa14d085dabf34145e392062a50",
    "Sentences/1000033.txt": "7503be5ef209456bec02f3fe811ff50adaed2de4d16f64c97aca0f64d5ba00cd",
    "Sentences/1000034.txt": "f239a84ef48fff9c8957e3713a984834d2d8c1cc937e8aaf4bd16f5d0f602ef5",
    "Sentences/1000035.txt": "6a0a5fb2a7acefb4c82f3d22fd2decad3d2eb556422496281532bec067a84056",
    "Sentences/1000036.txt": "db6ad1cc18bfee54ac741b8e8c00a17cc2f77c0d2363bc08b4f43514ce640bb8",
    "Sentences/1000037.txt": "23e5e9d69bcd3441e8e10ce993de52366d1b77c057cae6cba072f09d75d0eb92",
    "Sentences/1000038.txt": "c5d5c61f5ef5cbace203fc6617f9c1b8d18202bb29d7cfb04f7a0216887fe96c",
    "Sentences/1000039.txt": "c8b95e4e15524b3257b62a103cf1861b8f094c392983cd40b2271d1eafab25de",
    "synthetic.json": "e6da8ad62b150f90628096bd89f4a3b4f48114633f29704b28fa439fb2f09ec7",
    "test.txt": "c886497c536c736dfe720ea3996b463679ea780d85150309be7b985b5675c18f",
    "train.txt": "019d3db8cfd8bfc14116fae7c5683a122ad9ad5eb7f851bd31bc2652e593b914",
    "twins.json": "d1440a6645bba255ff2ef7a028623a94e7f758f4831df846ac2a269befedef36",
    "val.txt": "ee404ca6223969c966cd96cfe5bb5acc357bf2688147543f593f3a4df4142e4b",
}
# Pillow's JPEG encoder and HDF5 write these bytes (compared with the recording versions only).
BINARY_FILES = {
    "Images/1000000.jpg": "6aa0b737eefaf4822968817eae811779fc9983112f91619f02abeeed3ad0dae0",
    "Images/1000001.jpg": "b9d0daf31e80d494b86e373f1bb9604eadd3c9488071735e8f975a3df1c3d811",
    "Images/1000002.jpg": "25a9e8877f4c5255bf3f29093899173cd5669820d73d38ce55c7528598d2acec",
    "Images/1000003.jpg": "967f7398dccdbe1c159b7f78d49ef5afa9747f83eec7192c05f181bbb6593828",
    "Images/1000004.jpg": "397dab3cb0566b2bde8445bfc328301d492ce6244fc2e2f4bfcbd42e5e5a9fa3",
    "Images/1000005.jpg": "d854df06387cd7a51de49e122658102e677455f369e102b0fc8a3d5581a4aa6a",
    "Images/1000006.jpg": "05429dd87412c81c5223297e552633c134186877f3a30111d180229d4b792cab",
    "Images/1000007.jpg": "f62f32a6050e89bd47000b28afe28ce3079d6bc8c7acc3aaddea531becd08743",
    "Images/1000008.jpg": "b361501e06a39fa6981dcfd89d2be57c80a57d1bd342e41f019ee1786a999fa7",
    "Images/1000009.jpg": "d5736fc8e559a5a016d34bd9beb361153c4eced549ee74ec99a75f68bec52b59",
    "Images/1000010.jpg": "63f4e0ee3762841af247022f9ba0eb2969581a7df7b6a9bfaaf35ea86d7a6f67",
    "Images/1000011.jpg": "4384f0a6792222ae09200795fe0d8f425cc686ad52da78821383513acd2d320d",
    "Images/1000012.jpg": "108d7855f438c68a196ec1b5bca9b9db6acf1a3a6212a67e96be283a9ab2404b",
    "Images/1000013.jpg": "488ab431adf78f8d0f90ad4ebfcf26707dac2b39fbca4253611f12b9eb932324",
    "Images/1000014.jpg": "2031c14d4946c5db0b40ae56547720c4e7dfd1e67f131fd2a69788c3872b73f1",
    "Images/1000015.jpg": "b440fa7a714b1aa7a52eb125e8181c06521f1277b19e826d5a6a59f28a34369b",
    "Images/1000016.jpg": "32c713a388d5d9d37b6460884c559e30b81355b821599a274471689a1a5cd939",
    "Images/1000017.jpg": "c254bd21cc868f1d7695933195896284e2e40acb220a23f8c7f12df9321a7bdb",
    "Images/1000018.jpg": "ca81d3f0c3023c67fd344eda4425e5e92edec41837e7d05aef74b0589c682518",
    "Images/1000019.jpg": "37423782ff4958bd96460893a50f8d074546bfaa0fc93fe04029b187865f8f88",
    "Images/1000020.jpg": "1bbcc76f241547cd9dbebc767f78eec82b0024ef5ce35087c5b5fbc2f693e183",
    "Images/1000021.jpg": "5a12d097b8ee6cbb90b7e2770d25059ec60a3244fc48bea945deafe07216e9f3",
    "Images/1000022.jpg": "1854bf9c8819494ac104a95f92c93e0409fc9b820e4431d837601fcb137cd6bd",
    "Images/1000023.jpg": "70bd1f41b687e5b83b4f60ab32e5848d3e7c4d19bd57d82ded6bca14246fcbeb",
    "Images/1000024.jpg": "7332948d74da0b66059f9f94e8a77e06933a2913c2e269ab27d4be5e77d788e2",
    "Images/1000025.jpg": "9b632e02ba899c25efad8a86326b92e9f60f3889ffabbbd3e5cab86ebf90b53b",
    "Images/1000026.jpg": "fbaab6c8f06fff15ae29a020796d325cf16f7e5492e12a1d2ada91ed9d534452",
    "Images/1000027.jpg": "4b262361b041ed3931af39a04d2f3fc23cac1156a992b3b9e60091276b8ecb1b",
    "Images/1000028.jpg": "0d317b13e5e3e9302f8dfc08e0f7df4ca59252eb17970c036772cf884a65fabd",
    "Images/1000029.jpg": "3a802991fafc84270ca19f79055f5c7da10bc891b00e284937b4fc354f1c3048",
    "Images/1000030.jpg": "9e0a647927d074f3d16f1c95cc17fc3a057050e2e271a404448b837d322a07b4",
    "Images/1000031.jpg": "607fe587048e2edab5cf092cbd6fc09d9092653852acf7e9abcb6871bd459970",
    "Images/1000032.jpg": "4076c79f5d38a4caf31de91563e85154923024295be85853cd9d8df73398b150",
    "Images/1000033.jpg": "e6ae41d55ad9e8107865ee2ddd2bb890e49a263193152f2cd0425345c9e08466",
    "Images/1000034.jpg": "2757c9ce3b75066f04eb0e6e931623d1e5f5507c052933d8fd84d74367ff1644",
    "Images/1000035.jpg": "716193ed64b930adef5f45f1215407d0d3582f8ccced6e9b5e3bf31c1dcbcf42",
    "Images/1000036.jpg": "07750056586694f1e624f652af478b6a654355f4b7796ac152305c21d3e42743",
    "Images/1000037.jpg": "a3d78a147aad433188d72711bef4e6d408294d0253bd2fce16b5c32ffa019865",
    "Images/1000038.jpg": "6a3fb67e76fe288b47133fc84081eba2420e9b1c13a3eb09f52bffb310080f07",
    "Images/1000039.jpg": "5ecce2bc7c679704a75f483ffded3c84bb199766df617110576325e9145c34e4",
    "proposals.h5": "44d5e5c90c272cc4d65bd872478d7c60e5e88da71a34326c814b9b29cb2d8a93",
}
# sha256 over proposals.h5's class names and, per image id in order, boxes / scores / labels (dtype, shape, bytes)
# and the image size: the proposals' numbers, whatever the HDF5 version.
PROPOSAL_ARRAYS = "c46df9656d29f38976c73ca9e7bf7f6bd215ce393d62a12f236a65818274f46d"


def proposals_digest(path: Path) -> str:
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        h.update(f.attrs["class_names"].encode())
        for image_id in sorted(f["images"]):
            group = f["images"][image_id]
            h.update(image_id.encode())
            for name in ("boxes", "scores", "labels"):
                array = np.ascontiguousarray(group[name][()])
                h.update(f"{name}{array.dtype.str}{array.shape}".encode())
                h.update(array.tobytes())
            h.update(f"{int(group.attrs['width'])}x{int(group.attrs['height'])}".encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("anchor") / "bench"
    generate_synthetic(root, num_images=40, seed=0, workers=1)
    hashes = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted(root.rglob("*")) if p.is_file()}
    return root, hashes


def test_default_files_and_proposals_unchanged(written):
    root, hashes = written
    assert sorted(hashes) == sorted({**TEXT_FILES, **BINARY_FILES})  # no file added or removed
    changed = sorted(name for name, digest in TEXT_FILES.items() if hashes[name] != digest)
    assert not changed, f"the default benchmark changed: {changed[:10]}"
    assert proposals_digest(root / "proposals.h5") == PROPOSAL_ARRAYS


def test_default_encoded_files_unchanged(written):
    versions = {"libjpeg": features.version("jpg"), "hdf5": h5py.version.hdf5_version}
    if versions != RECORDED_WITH:
        pytest.skip(f"encoder libraries {versions} differ from the recording's {RECORDED_WITH}")
    _, hashes = written
    changed = sorted(name for name, digest in BINARY_FILES.items() if hashes[name] != digest)
    assert not changed, f"the default benchmark's images or proposals file changed: {changed[:10]}"
