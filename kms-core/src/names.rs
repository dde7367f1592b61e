//! The one macro behind every enum whose values travel by their AWS names.

/// Declares an enum whose variants have fixed AWS wire names, with `as_str`, `FromStr`,
/// `Display` and `ALL`.
macro_rules! aws_names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The AWS wire name.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::error::KmsError;

            fn from_str(text: &str) -> $crate::error::KmsResult<Self> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::error::KmsError::Validation(format!(
                        "{:?} is not a valid {}; valid values: {}",
                        text,
                        stringify!($name),
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }
    };
}

pub(crate) use aws_names;
