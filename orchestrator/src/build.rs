//! Images built from an app's `build` context through the engine (`docker build`, no registry):
//! the context goes over as a tar, the engine's layer cache keeps rebuilds of an unchanged
//! context quick.

use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;

use crate::apps::AppSpec;
use crate::{Engine, Error};

/// How many of the build's last lines an error shows.
const OUTPUT_LINES: usize = 20;

impl Engine {
    /// Builds `app.image` from `app.build`, if it has one; the image then is on the engine.
    pub async fn build_app_image(&self, app: &AppSpec) -> Result<(), Error> {
        let Some(context) = &app.build else {
            return Ok(());
        };
        let fail = |reason: String, output: Vec<String>| Error::Build {
            app: app.name.to_string(),
            image: app.image.clone(),
            context: context.clone(),
            reason,
            output,
        };
        let dir = context.clone();
        let tar = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut b = tar::Builder::new(Vec::new());
            b.follow_symlinks(false);
            b.append_dir_all(".", &dir)?;
            b.into_inner()
        })
        .await
        .map_err(|e| fail(format!("the context could not be packed: {e}"), Vec::new()))?
        .map_err(|e| fail(format!("the context could not be read: {e}"), Vec::new()))?;
        let options = BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(&app.image)
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream = std::pin::pin!(self.docker.build_image(
            options,
            None,
            Some(bollard::body_full(tar.into()))
        ));
        let mut output: Vec<String> = Vec::new();
        let keep = |output: &mut Vec<String>, text: &str| {
            output.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(String::from),
            );
            let extra = output.len().saturating_sub(OUTPUT_LINES);
            output.drain(..extra);
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = &info.stream {
                        keep(&mut output, text);
                    }
                    if let Some(detail) = info.error_detail {
                        let message = detail.message.unwrap_or_else(|| "unknown error".into());
                        return Err(fail(message, output));
                    }
                }
                Err(e) => return Err(fail(e.to_string(), output)),
            }
        }
        tracing::info!(app = %app.name, image = %app.image, context = %context.display(), "image built");
        Ok(())
    }
}
