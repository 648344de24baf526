"""WanT2V: text-to-video (t2v-A14B with two experts; Wan2.1 t2v-1.3B / t2v-14B with one)."""
from . import flow
from .base import Job, WanTaskBase, check_frame_num, resolve_seed


class WanT2V(WanTaskBase):
    def prepare(self, input_prompt, size=(1280, 720), frame_num=81, shift=5.0, sample_solver="unipc",
                sampling_steps=50, guide_scale=5.0, n_prompt="", seed=-1, offload_model=True):
        check_frame_num(frame_num)
        width, height = size
        self.check_size(width, height)
        seed = resolve_seed(seed)
        shape = self.latent_shape(frame_num, height, width)
        context, context_null = self.encode_prompts(input_prompt, n_prompt, offload_model)
        settings = self.job_settings(size=[width, height], frame_num=frame_num, shift=shift,
                                     sample_solver=sample_solver, sampling_steps=sampling_steps,
                                     guide_scale=guide_scale, seed=seed,
                                     seq_len=flow.seq_len_for(shape, self.patch_size))
        return Job(noise=self.draw_noise(shape, seed), context=context, context_null=context_null, settings=settings)

    def generate(self, input_prompt, size=(1280, 720), frame_num=81, shift=5.0, sample_solver="unipc",
                 sampling_steps=50, guide_scale=5.0, n_prompt="", seed=-1, offload_model=True):
        """Returns the video [3, frame_num, H, W] in [-1, 1]."""
        job = self.prepare(input_prompt, size, frame_num, shift, sample_solver, sampling_steps, guide_scale,
                           n_prompt, seed, offload_model)
        return self.decode(self.denoise(job, offload_model))
