"""ADA: the augmentation operations do what they say, stay differentiable, and p follows the heuristic."""
import math

import numpy as np
import pytest
import torch

from mura_aug.errors import UserError
from mura_aug.gan import augment
from mura_aug.gan.augment import AdaController, AugmentPipe, build_augmentation, make_augment_pipe


def _images(n=32, channels=3, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand([n, channels, size, size], generator=generator) * 2 - 1


def _pipe(p=1.0, **ops):
    pipe = AugmentPipe(**ops)
    pipe.p.fill_(p)
    return pipe


def _smooth(n=4, size=32):
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    blob = torch.exp(-((xs - 0.2) ** 2 + (ys + 0.1) ** 2) * 4) * 2 - 1
    return blob.expand(n, 3, size, size).clone()


@pytest.mark.parametrize("preset", list(augment.AUGMENT_PRESETS))
def test_p_zero_is_exact_identity(preset):
    images = _images()
    torch.manual_seed(1)
    assert torch.equal(make_augment_pipe(preset, p=0.0)(images), images)


def test_p_one_changes_every_sample_and_p_is_a_buffer():
    images = _images()
    pipe = make_augment_pipe("xray", p=1.0)
    assert "p" in dict(pipe.named_buffers())
    torch.manual_seed(2)
    out = pipe(images)
    assert out.shape == images.shape
    changed = (out - images).flatten(1).abs().amax(dim=1) > 1e-3
    assert bool(changed.all())


def test_xflip_is_an_exact_mirror():
    images = _images(n=64)
    torch.manual_seed(3)
    out = _pipe(xflip=1)(images)
    same = [torch.equal(out[i], images[i]) for i in range(64)]
    flipped = [torch.equal(out[i], images[i].flip(-1)) for i in range(64)]
    assert all(a or b for a, b in zip(same, flipped))
    assert 10 < sum(flipped) < 54  # half of the applied flips are the identity


def test_rotate90_is_an_exact_quarter_turn():
    images = _images(n=64)
    torch.manual_seed(4)
    out = _pipe(rotate90=1)(images)
    turns = []
    for i in range(64):
        matches = [k for k in range(4) if torch.equal(out[i], torch.rot90(images[i], k, dims=(1, 2)))]
        assert len(matches) == 1
        turns.append(matches[0])
    assert set(turns) == {0, 1, 2, 3}


def test_integer_translation_moves_whole_pixels_with_mirrored_borders():
    images = _images(n=16, size=32)
    torch.manual_seed(5)
    out = _pipe(xint=1)(images)
    shifts = {}
    for dy in range(-4, 5):  # xint_max 0.125 of 32 px
        for dx in range(-4, 5):
            idx_y = augment._mirror_index(torch.arange(32) - dy, 32)
            idx_x = augment._mirror_index(torch.arange(32) - dx, 32)
            shifts[(dx, dy)] = images[:, :, idx_y][:, :, :, idx_x]
    moved = 0
    for i in range(16):
        found = [shift for shift, candidate in shifts.items() if torch.equal(out[i], candidate[i])]
        assert found, f"sample {i} is not an integer shift of its input"
        moved += found[0] != (0, 0)
    assert moved >= 12


def test_mirror_index_folds_at_the_edges():
    assert augment._mirror_index(torch.tensor([-2, -1, 0, 3, 4, 5, 9]), 4).tolist() == [1, 0, 0, 3, 3, 2, 1]


def test_general_resampling_matches_exact_moves():
    images = _images(n=3, size=16)
    quarter = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).expand(3, 3, 3)
    rotated = augment._resample(images, quarter, supersample=1)
    # Output->input map (x, y) -> (y, -x) is a quarter turn of the image.
    expected = torch.stack([torch.rot90(img, 1, dims=(1, 2)) for img in images])
    if not torch.allclose(rotated, expected, atol=1e-5):
        expected = torch.stack([torch.rot90(img, -1, dims=(1, 2)) for img in images])
    assert torch.allclose(rotated, expected, atol=1e-5)
    shift = torch.tensor([[1.0, 0.0, -2.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]).expand(3, 3, 3)
    shifted = augment._resample(images, shift, supersample=1)  # out(x, y) = in(x - 2, y + 1)
    assert torch.allclose(shifted[:, :, :14, 2:], images[:, :, 1:15, :14], atol=1e-6)
    half = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).expand(3, 3, 3)
    between = augment._resample(images, half, supersample=1)  # halfway between neighbouring pixels
    assert torch.allclose(between[..., :15], (images[..., :15] + images[..., 1:]) / 2, atol=1e-6)


def test_isotropic_scale_and_rotation_keep_a_centred_blob_but_change_it():
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    blob = (torch.exp(-(xs ** 2 + ys ** 2) * 6) * 2 - 1).expand(8, 3, 32, 32).clone()
    torch.manual_seed(6)
    scaled = _pipe(scale=1)(blob)
    # A centred blob stays centred (its centre pixel stays the brightest), its size changes.
    assert bool((scaled[:, 0].flatten(1).argmax(1) // 32 - 15.5).abs().max() <= 1)
    assert (scaled - blob).abs().amax() > 0.05
    round_blob = blob.clone()
    torch.manual_seed(7)
    turned = _pipe(rotate=1, supersample=1)(round_blob)
    inside = (xs ** 2 + ys ** 2) < 0.8  # the corners of a turned square fetch mirrored content
    assert torch.allclose(turned[..., inside], round_blob[..., inside], atol=0.03)  # a round blob turns into itself


def test_brightness_adds_and_contrast_multiplies_per_sample():
    images = _images(n=16)
    torch.manual_seed(8)
    out = _pipe(brightness=1)(images)
    offset = (out - images).flatten(1)
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-5)
    assert offset[:, 0].abs().max() > 0.01
    torch.manual_seed(9)
    out = _pipe(contrast=1)(images)
    ratio = (out / images).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=1e-4)


def test_luma_flip_inverts_grey_images_and_hue_saturation_leave_them_alone():
    grey = _images(n=32, channels=1).expand(32, 3, 16, 16).clone()
    torch.manual_seed(10)
    flipped = _pipe(lumaflip=1)(grey)
    for i in range(32):
        assert torch.allclose(flipped[i], grey[i], atol=1e-5) or torch.allclose(flipped[i], -grey[i], atol=1e-5)
    torch.manual_seed(11)
    assert torch.allclose(_pipe(hue=1, saturation=1)(grey), grey, atol=1e-5)
    colour = _images(n=8)
    torch.manual_seed(11)
    assert (_pipe(hue=1, saturation=1)(colour) - colour).abs().amax() > 0.1


def test_single_channel_images_are_supported():
    images = _images(n=8, channels=1)
    torch.manual_seed(12)
    out = make_augment_pipe("bgc", p=0.8)(images)
    assert out.shape == images.shape and torch.isfinite(out).all()


def test_xray_preset_drops_the_colour_operations_that_make_no_sense_on_radiographs():
    xray = augment.AUGMENT_PRESETS["xray"]
    for op in ("lumaflip", "hue", "saturation"):
        assert op not in xray and augment.AUGMENT_PRESETS["bgc"][op] == 1
    for op in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast"):
        assert xray[op] == 1
    assert augment.DEFAULT_PRESET == "xray"


def test_gradients_flow_to_the_images_twice():
    images = _images(n=6, size=16).double().requires_grad_(True)
    pipe = make_augment_pipe("bgc", p=0.9)

    def augmented(x):
        torch.manual_seed(13)  # the same random transformation on every call
        return pipe(x)

    out = augmented(images)
    (grad,) = torch.autograd.grad(out.square().sum(), images, create_graph=True)
    assert grad.abs().sum() > 0
    grad.square().sum().backward()  # second order, as the R1 penalty needs
    assert images.grad is not None and images.grad.abs().sum() > 0
    small = images[:2, :, :8, :8].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(augmented, (small,), fast_mode=True)
    assert torch.autograd.gradgradcheck(augmented, (small,), fast_mode=True)


def test_surrounding_autocast_does_not_lower_the_precision():
    images = _smooth(n=8, size=32)
    pipe = make_augment_pipe("xray", p=0.8)
    torch.manual_seed(15)
    expected = pipe(images)
    torch.manual_seed(15)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = pipe(images)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_random_draws_do_not_depend_on_p():
    images = _images(n=8)
    torch.manual_seed(14)
    make_augment_pipe("bgc", p=0.0)(images)
    after_p0 = torch.rand(3)
    torch.manual_seed(14)
    make_augment_pipe("bgc", p=0.7)(images)
    assert torch.equal(after_p0, torch.rand(3))


def test_bad_settings_raise_user_errors():
    with pytest.raises(UserError, match="xray"):
        make_augment_pipe("sepia")
    with pytest.raises(UserError, match="cutout"):
        AugmentPipe(cutout=1)
    AugmentPipe(cutout=0, noise=0)  # NVlabs pickles carry these at 0
    with pytest.raises(UserError, match="p="):
        make_augment_pipe("xray", p=1.5)
    with pytest.raises(UserError, match="--p"):
        build_augmentation("fixed", p=None)
    with pytest.raises(UserError, match="square"):
        _pipe(rotate90=1)(torch.zeros(2, 3, 8, 16))


def test_build_augmentation_modes():
    pipe, ada = build_augmentation("ada", batch_size=16)
    assert float(pipe.p) == 0 and ada.batch_size == 16 and ada.target == 0.6
    pipe, ada = build_augmentation("fixed", p=0.25)
    assert ada is None and float(pipe.p) == 0.25
    assert build_augmentation("noaug") == (None, None)


# --- the adaptive heuristic --------------------------------------------------------------------------------

def _drive(controller, pipe, logits, steps):
    results = []
    for _ in range(steps):
        controller.accumulate(logits)
        results.append(controller.update(pipe))
    return results


def test_p_rises_at_the_500_kimg_speed_when_d_overfits():
    pipe = make_augment_pipe("xray")
    ada = AdaController(target=0.6, interval=4, ada_kimg=500, batch_size=32)
    overfit = torch.tensor([[2.0], [1.0], [0.5], [3.0]])  # D sure of every real image: r_t = 1
    results = _drive(ada, pipe, overfit, 4000)
    assert results[:3] == [None, None, None] and results[3] == 1.0
    # 1000 adjustments of 32 * 4 images = 128 kimg of 500 -> p = 0.256
    assert float(pipe.p) == pytest.approx(1000 * 32 * 4 / 500_000, rel=1e-4)
    # 500 kimg in all take p from 0 to 1, and it stops there.
    _drive(ada, pipe, overfit, 4 * math.ceil(500_000 / 128) - 4000)
    assert float(pipe.p) == pytest.approx(1.0, abs=1e-3)
    _drive(ada, pipe, overfit, 400)
    assert float(pipe.p) == 1.0


def test_p_falls_and_clamps_at_zero_when_d_does_not_overfit():
    pipe = make_augment_pipe("xray", p=0.01)
    ada = AdaController(target=0.6, interval=4, ada_kimg=500, batch_size=32)
    balanced = torch.tensor([[1.0], [-1.0], [0.5], [-0.2]])  # r_t = 0 < target
    _drive(ada, pipe, balanced, 40)
    assert float(pipe.p) == pytest.approx(0.01 - 10 * 128 / 500_000, abs=1e-6)
    _drive(ada, pipe, balanced, 400)
    assert float(pipe.p) == 0.0
    assert ada.r_t == 0.0


def test_r_t_is_the_mean_sign_over_the_interval():
    pipe = make_augment_pipe("xray")
    ada = AdaController(target=0.6, interval=2, batch_size=4)
    ada.accumulate(torch.tensor([1.0, 1.0, -1.0, 1.0]))
    assert ada.update(pipe) is None
    ada.accumulate(0.0, count=4)  # an averaged sign, as the loss reports it
    assert ada.update(pipe) == pytest.approx((2 + 0) / 8)
    assert float(pipe.p) == 0.0  # 0.25 < 0.6: p would fall, but it is already 0


def test_controller_state_resumes_bit_exactly_mid_interval():
    logits = [torch.randn(8, 1, generator=torch.Generator().manual_seed(i)) + 0.8 for i in range(40)]
    pipe_a, ada_a = make_augment_pipe("xray"), AdaController(interval=4, batch_size=8, ada_kimg=1)
    for x in logits:
        ada_a.accumulate(x)
        ada_a.update(pipe_a)
    pipe_b, ada_b = make_augment_pipe("xray"), AdaController(interval=4, batch_size=8, ada_kimg=1)
    for x in logits[:6]:  # stop in the middle of an interval, with signs accumulated
        ada_b.accumulate(x)
        ada_b.update(pipe_b)
    saved_state, saved_p = ada_b.state_dict(), pipe_b.state_dict()
    assert saved_state["sign_count"] > 0
    pipe_c, ada_c = make_augment_pipe("xray"), AdaController()
    ada_c.load_state_dict(saved_state)
    pipe_c.load_state_dict(saved_p)
    for x in logits[6:]:
        ada_c.accumulate(x)
        ada_c.update(pipe_c)
    assert torch.equal(pipe_a.p, pipe_c.p) and ada_a.state_dict() == ada_c.state_dict()
    assert float(pipe_a.p) > 0


def test_controller_rejects_bad_settings():
    with pytest.raises(UserError, match="target"):
        AdaController(target=1.5)
    with pytest.raises(UserError):
        AdaController(interval=0)
    with pytest.raises(UserError, match="sign_sum"):
        AdaController().load_state_dict({"p": 0.3})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pipe_on_cuda_matches_cpu_for_the_same_transformations():
    images = _images(n=8, size=32)
    pipe = make_augment_pipe("bgc", p=0.0).cuda()
    assert torch.equal(pipe(images.cuda()).cpu(), images)
    pipe.p.fill_(0.8)
    x = images.cuda().requires_grad_(True)
    out = pipe(x)
    out.square().sum().backward()
    assert out.is_cuda and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # The resampler itself gives the same numbers on both devices.
    matrix = torch.tensor([[0.9, 0.2, 1.3], [-0.1, 1.1, -0.7], [0.0, 0.0, 1.0]]).expand(8, 3, 3)
    cpu = augment._resample(images, matrix, 2)
    gpu = augment._resample(images.cuda(), matrix.cuda(), 2).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-5)


def test_the_affine_building_blocks_are_the_textbook_matrices():
    # The geometric maps are stacked from their entries (augment._affine2d, float64 numpy) and composed factor
    # by factor.
    aug = augment
    theta = np.array([0.3, -1.2])
    c, s = np.cos(theta), np.sin(theta)
    rotation = np.zeros((2, 3, 3))
    rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1], rotation[:, 2, 2] = c, -s, s, c, 1
    assert np.array_equal(aug._rotate2d(theta), rotation)
    shift = aug._translate2d(np.array([2.0, -1.0]), np.array([0.5, 3.0]))
    assert np.array_equal(shift[1], [[1.0, 0.0, -1.0], [0.0, 1.0, 3.0], [0.0, 0.0, 1.0]])
    scale = aug._scale2d(np.array([2.0, 0.5]), np.array([3.0, 1.0]))
    assert np.array_equal(scale[0], np.diag([2.0, 3.0, 1.0]))
    quarter = aug._quarter_turns2d(np.array([1, 2]))
    assert np.array_equal(quarter[0], [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert np.array_equal(aug._compose([], 2), np.broadcast_to(np.eye(3), (2, 3, 3)))
    assert np.array_equal(aug._compose([rotation, shift, scale], 2), np.eye(3) @ rotation @ shift @ scale)
    identity4 = aug._compose([], 2, 4)
    identity4[0, 0, 0] = 5.0  # a fresh array each time, safe to write into
    assert np.array_equal(aug._compose([], 2, 4)[0], np.eye(4))


def test_each_forward_pass_draws_two_fixed_blocks_whatever_is_on():
    # The colour part reads the same columns whether or not the geometric part is on, so switching one part
    # off does not change what the other does.
    images = _images(n=8)
    torch.manual_seed(21)
    with_geometry = make_augment_pipe("bgc", p=1.0)(images)
    after = torch.rand(3)
    torch.manual_seed(21)
    colour_only = make_augment_pipe("bgc", p=1.0, xflip=0, rotate90=0, xint=0, scale=0, rotate=0, aniso=0,
                                    xfrac=0)(images)
    assert torch.equal(after, torch.rand(3))  # the same amount drawn
    pipe = make_augment_pipe("bgc", p=1.0)
    torch.manual_seed(21)
    draws = augment._Draws(8, "cpu")
    pipe._p = 1.0
    pipe._geometry(8, images.shape[2], images.shape[3], draws)
    matrix, changed = pipe._color_matrix(8, draws)
    assert changed.all()
    expected = pipe._apply_color(images, torch.from_numpy(matrix).float())
    torch.testing.assert_close(colour_only, expected)
    assert not torch.allclose(with_geometry, colour_only)
