// Drop a photo on the 'try the model' form: it becomes the chosen file and the form is sent.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("try");
  const input = document.getElementById("photo");
  if (!form || !input) return;
  ["dragenter", "dragover"].forEach((name) => form.addEventListener(name, (event) => {
    event.preventDefault();
    form.classList.add("over");
  }));
  form.addEventListener("dragleave", () => form.classList.remove("over"));
  form.addEventListener("drop", (event) => {
    event.preventDefault();
    form.classList.remove("over");
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      form.submit();
    }
  });
});
