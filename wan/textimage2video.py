"""WanTI2V: TI2V-5B, text-to-video or text+image-to-video (fixed first latent frame)."""
from . import flow
from .base import Job, WanTaskBase, check_frame_num, resolve_seed
from .utils.utils import best_output_size
from .utils.video_io import image_to_frames, resize_center_crop, to_model_range


class WanTI2V(WanTaskBase):
    def image_size(self, img, max_area):
        """(width, height) the reference gives an input image: its aspect ratio within max_area,
        on the 32-pixel grid."""
        step = self.vae_stride[1] * self.patch_size[1]
        return best_output_size(img.width, img.height, step, step, max_area)

    def encode_first_frame(self, img, width, height):
        """Resize-and-crop `img` exactly as the reference does, encode it alone: [48, 1, h, w]."""
        frame = to_model_range(image_to_frames(resize_center_crop(img.convert("RGB"), width, height)))
        return self.vae.encode([frame.to(self.device)])[0]

    def prepare(self, input_prompt, img=None, size=(1280, 704), max_area=704 * 1280, frame_num=121, shift=5.0,
                sample_solver="unipc", sampling_steps=50, guide_scale=5.0, n_prompt="", seed=-1, offload_model=True):
        check_frame_num(frame_num)
        seed = resolve_seed(seed)
        if img is None:
            width, height = size
        else:
            width, height = self.image_size(img, max_area)
        self.check_size(width, height)
        first_frame = None if img is None else self.encode_first_frame(img, width, height)
        shape = self.latent_shape(frame_num, height, width)
        context, context_null = self.encode_prompts(input_prompt, n_prompt, offload_model)
        settings = self.job_settings(size=[width, height], frame_num=frame_num, shift=shift,
                                     sample_solver=sample_solver, sampling_steps=sampling_steps,
                                     guide_scale=guide_scale, seed=seed, max_area=max_area,
                                     seq_len=flow.seq_len_for(shape, self.patch_size))
        return Job(noise=self.draw_noise(shape, seed), context=context, context_null=context_null,
                   settings=settings, first_frame=first_frame)

    def generate(self, input_prompt, img=None, size=(1280, 704), max_area=704 * 1280, frame_num=121, shift=5.0,
                 sample_solver="unipc", sampling_steps=50, guide_scale=5.0, n_prompt="", seed=-1,
                 offload_model=True):
        """Text-to-video when `img` is None, else the video starts from `img`. Returns [3, F, H, W]."""
        job = self.prepare(input_prompt, img, size, max_area, frame_num, shift, sample_solver, sampling_steps,
                           guide_scale, n_prompt, seed, offload_model)
        return self.decode(self.denoise(job, offload_model))
