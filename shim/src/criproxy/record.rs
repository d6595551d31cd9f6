//! Finding the image reference and the credentials in a CRI PullImage request as it travels: a
//! gRPC length-prefixed message (1 byte compressed flag, 4 bytes big-endian length, protobuf).
//! runtime.v1 and runtime.v1alpha2 share the PullImageRequest wire layout, so one decoder serves
//! both.

use k8s_cri::v1::PullImageRequest;
use prost::Message as _;
use vfs::registry::image_creds::PullAuth;

const PULL_PATHS: [&str; 2] = ["/runtime.v1.ImageService/PullImage", "/runtime.v1alpha2.ImageService/PullImage"];

pub fn is_pull_image(path: &str) -> bool {
    PULL_PATHS.contains(&path)
}

/// The image and credentials of a PullImage request body; None when it carries no AuthConfig.
pub fn pull_credentials(body: &[u8]) -> Result<Option<(String, PullAuth)>, String> {
    if body.len() < 5 {
        return Err(format!("PullImage request of {} bytes is not a gRPC message", body.len()));
    }
    if body[0] != 0 {
        return Err("PullImage request is compressed (grpc-encoding); its credentials cannot be read".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let msg =
        body.get(5..5 + len).ok_or_else(|| format!("PullImage message claims {len} bytes, has {}", body.len() - 5))?;
    let req = PullImageRequest::decode(msg).map_err(|e| format!("PullImage request is not a PullImageRequest: {e}"))?;
    let image = req.image.map(|i| i.image).unwrap_or_default();
    let Some(a) = req.auth else { return Ok(None) };
    if image.is_empty() {
        return Err("PullImage request with credentials but no image".into());
    }
    Ok(Some((
        image,
        PullAuth { username: a.username, password: a.password, auth: a.auth, server_address: a.server_address },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{AuthConfig, ImageSpec};

    fn framed(req: &PullImageRequest) -> Vec<u8> {
        let msg = req.encode_to_vec();
        let mut out = vec![0];
        out.extend((msg.len() as u32).to_be_bytes());
        out.extend(msg);
        out
    }

    #[test]
    fn finds_image_and_auth_config() {
        let req = PullImageRequest {
            image: Some(ImageSpec { image: "reg.io/team/app:v1".into(), ..Default::default() }),
            auth: Some(AuthConfig {
                username: "u".into(),
                password: "p".into(),
                server_address: "reg.io".into(),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        let (image, auth) = pull_credentials(&framed(&req)).unwrap().unwrap();
        assert_eq!(image, "reg.io/team/app:v1");
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str(), auth.server_address.as_str()),
            ("u", "p", "reg.io")
        );
        let anonymous = PullImageRequest { auth: None, ..req };
        assert!(pull_credentials(&framed(&anonymous)).unwrap().is_none());
        assert!(pull_credentials(&[1, 0, 0, 0, 0]).is_err(), "compressed");
        assert!(pull_credentials(&[0, 0, 0, 0, 9, 1]).is_err(), "truncated");
        assert!(is_pull_image("/runtime.v1.ImageService/PullImage"));
        assert!(!is_pull_image("/runtime.v1.ImageService/ListImages"));
    }
}
